//go:build linux || darwin || freebsd

package herd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Signals a Process acts on.
const (
	// UpgradeSignal starts an upgrade (Process.Upgrade); systemd's
	// ExecReload=kill -HUP $MAINPID sends it.
	UpgradeSignal = syscall.SIGHUP
)

// Defaults for zero-valued Process fields.
const (
	DefaultReadyTimeout = 30 * time.Second
)

// Errors of an upgrade.
var (
	// ErrUpgradeInProgress is returned by Upgrade while another runs.
	ErrUpgradeInProgress = errors.New("herd: an upgrade is already in progress")
	// ErrNotServing is returned by Upgrade before Run has bound every
	// worker, or once the process is stopping or has been upgraded.
	ErrNotServing = errors.New("herd: the process is not serving")
)

// A Process runs workers as one program: it stops them gracefully on
// SIGINT or SIGTERM, reports to systemd, and upgrades itself to a new
// executable without failing a connection. RunAll is a Process with the
// zero configuration.
//
// An upgrade (UpgradeSignal, or Upgrade) starts the executable again, with
// the same arguments and environment, and hands it the workers' listening
// sockets (their descriptors, named in the environment; the new process's
// Listen takes them for workers with the same Name and Addr). Once the new
// process reports that it is ready, this one accepts nothing more, serves
// the connections it has for UpgradeGrace, then stops gracefully as on
// SIGTERM (each worker within its StopTimeout; a WebSocket connection gets
// a close frame 1001, Going Away). If the new process fails to start,
// exits, or is not ready within ReadyTimeout, this one goes on serving and
// logs why. Under systemd (Type=notify), the old process reports
// RELOADING=1 when the upgrade begins, and MAINPID with READY=1 once the
// new one serves.
//
// The new process starts with UpgradeSignal ignored, and ignores it until
// it is ready: a SIGHUP that reaches it early (kill -HUP by name, a
// terminal's hangup) neither kills it nor upgrades it again. To pass that
// on, the old process ignores the signal while it starts the new one,
// which undoes signal.Notify registrations for it other than the
// Processes' own (an application that has its own use for SIGHUP cannot
// share it with upgrades anyway).
type Process struct {
	Workers []*Worker
	// Executable is the program an upgrade starts. Empty means this
	// process's own executable, as the path it was started from now
	// names it: replace the file, then signal.
	Executable string
	// Args are the arguments an upgrade passes (without the program
	// name). Nil means this process's own (os.Args[1:]).
	Args []string
	// ReadyTimeout bounds the wait for the new process to be ready. Zero
	// means DefaultReadyTimeout.
	ReadyTimeout time.Duration
	// UpgradeGrace is how long the old process serves its connections
	// after the new one took over accepting, before it stops gracefully.
	UpgradeGrace time.Duration
	// Logger receives the process's logs. Nil means the first worker's.
	Logger *slog.Logger

	mu        sync.Mutex
	serving   bool               // Run has bound every worker and runs them
	upgrading atomic.Bool        // one upgrade at a time
	upgraded  chan struct{}      // closed once a new process took over
	stop      context.CancelFunc // ends Run's context: the graceful stop
}

// RunAll runs the workers until ctx ends or the process receives SIGINT or
// SIGTERM, then stops them all gracefully, each within its StopTimeout; a
// second signal closes what is left at once. It returns once every worker
// has stopped, with the errors of those that failed joined. UpgradeSignal
// upgrades the process (see Process).
//
// Under a service manager that gives a NOTIFY_SOCKET (systemd's
// Type=notify), RunAll reports READY=1 once every worker's address is bound
// and its loops are starting, and STOPPING=1 when the graceful stop begins.
func RunAll(ctx context.Context, workers ...*Worker) error {
	return (&Process{Workers: workers}).Run(ctx)
}

func (p *Process) logger() *slog.Logger {
	if p.Logger != nil {
		return p.Logger
	}
	if len(p.Workers) > 0 {
		return p.Workers[0].logger()
	}
	return slog.Default()
}

// Run runs the workers as RunAll does, with p's upgrade settings.
func (p *Process) Run(ctx context.Context) error {
	ctx, stop := context.WithCancel(ctx)
	defer stop()
	sig := make(chan os.Signal, 2)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sig)
	hup := make(chan os.Signal, 1)
	// The new process of an upgrade started with UpgradeSignal ignored,
	// and watches it only once it is ready (see startChild).
	upgradeChild := os.Getenv(envReady) != ""
	if !upgradeChild {
		watchUpgradeSignal(hup)
	}
	defer unwatchUpgradeSignal(hup)

	for _, w := range p.Workers {
		if err := w.Listen(); err != nil {
			for _, w := range p.Workers {
				w.Shutdown(context.Background())
			}
			return err
		}
	}
	if n := unclaimedInherited(); n > 0 {
		p.logger().Warn("herd: closed listening sockets handed over that no worker took", "count", n)
	}
	errs := make([]error, len(p.Workers))
	var wg sync.WaitGroup
	for i, w := range p.Workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = w.Run(ctx)
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	p.mu.Lock()
	p.serving, p.stop, p.upgraded = true, stop, make(chan struct{})
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		p.serving = false
		p.mu.Unlock()
	}()
	if err := reportReady(); err != nil {
		p.logNotify(err)
	}
	if upgradeChild {
		watchUpgradeSignal(hup)
	}

	for stopping := false; !stopping; {
		select {
		case <-hup:
			go func() {
				if err := p.Upgrade(ctx); err != nil && !errors.Is(err, ErrUpgradeInProgress) {
					p.logger().Error("herd: upgrade failed; this process goes on serving", "err", err)
				}
			}()
		case <-sig:
			stopping = true
			stop() // each Run now stops gracefully
		case <-ctx.Done():
			stopping = true
		case <-done:
			return errors.Join(errs...)
		}
	}
	p.mu.Lock()
	p.serving = false // no upgrade of a process that stops
	p.mu.Unlock()
	if !p.handedOver() {
		p.logNotify(notify("STOPPING=1"))
	}
	select {
	case <-sig:
		force, cancel := context.WithCancel(context.Background())
		cancel()
		for _, w := range p.Workers {
			w.Shutdown(force) // ended context: close at once
		}
	case <-done:
	}
	<-done
	return errors.Join(errs...)
}

func (p *Process) readyTimeout() time.Duration {
	if p.ReadyTimeout > 0 {
		return p.ReadyTimeout
	}
	return DefaultReadyTimeout
}

// handedOver reports whether a new process took over.
func (p *Process) handedOver() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.upgraded == nil {
		return false
	}
	select {
	case <-p.upgraded:
		return true
	default:
		return false
	}
}

// logNotify logs a failed notification to the service manager.
func (p *Process) logNotify(err error) {
	if err != nil {
		p.logger().Warn("herd: notifying the service manager", "socket", os.Getenv("NOTIFY_SOCKET"), "err", err)
	}
}

// Upgrade starts the new executable, hands it the listening sockets and
// waits (at most ReadyTimeout, or until ctx ends) for it to report that it
// is ready. It then stops accepting and returns nil, and this process
// serves its connections for UpgradeGrace and stops gracefully; Run
// returns once it has. If the new process does not become ready, Upgrade kills it,
// returns why (with its exit status if it exited), and this process goes
// on serving. One upgrade runs at a time: ErrUpgradeInProgress.
func (p *Process) Upgrade(ctx context.Context) error {
	p.mu.Lock()
	serving, upgraded := p.serving, p.upgraded
	p.mu.Unlock()
	if !serving || p.handedOver() {
		return ErrNotServing
	}
	if !p.upgrading.CompareAndSwap(false, true) {
		return ErrUpgradeInProgress
	}
	p.logNotify(notify(fmt.Sprintf("RELOADING=1\nMONOTONIC_USEC=%d", monotonicMicros())))
	ctx, cancel := context.WithTimeout(ctx, p.readyTimeout())
	defer cancel()
	pid, err := p.startChild(ctx)
	if err != nil {
		for _, w := range p.Workers {
			w.resteer()
		}
		p.logNotify(notify("READY=1")) // the reload is over: this process serves on
		p.upgrading.Store(false)
		return err
	}
	p.logNotify(notify(fmt.Sprintf("MAINPID=%d\nREADY=1", pid)))
	for _, w := range p.Workers {
		w.stopAccepting()
	}
	p.logger().Info("herd: upgrade: the new process is ready and this one accepts no more", "pid", pid, "grace", p.UpgradeGrace)
	close(upgraded) // upgrading stays set: there is no second upgrade of this process
	go func() {
		time.Sleep(p.UpgradeGrace)
		p.mu.Lock()
		stop := p.stop
		p.mu.Unlock()
		stop()
	}()
	return nil
}

// startChild starts the new process with the listening sockets and waits
// until it is ready. It returns the child's PID.
func (p *Process) startChild(ctx context.Context) (int, error) {
	exe := p.Executable
	if exe == "" {
		var err error
		if exe, err = os.Executable(); err != nil {
			return 0, fmt.Errorf("herd: upgrade: %w", err)
		}
	}
	args := p.Args
	if args == nil {
		args = os.Args[1:]
	}
	ready, readyW, err := os.Pipe()
	if err != nil {
		return 0, fmt.Errorf("herd: upgrade: %w", err)
	}
	defer ready.Close()
	files := []*os.File{readyW} // the child's descriptor 3
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	names := map[string][]int{}
	for _, w := range p.Workers {
		fs, err := w.listenerFiles()
		if err != nil {
			return 0, fmt.Errorf("herd: upgrade: %w", err)
		}
		for _, f := range fs {
			names[w.listenKey()] = append(names[w.listenKey()], 3+len(files))
			files = append(files, f)
		}
	}
	listeners, _ := json.Marshal(names)
	closeOnExecAll()
	cmd := exec.Command(exe, args...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.ExtraFiles = files
	cmd.Env = append(childEnv(), envListeners+"="+string(listeners), envReady+"=3")
	if err := startIgnoringUpgradeSignal(cmd); err != nil {
		return 0, fmt.Errorf("herd: upgrade: start %s: %w", exe, err)
	}
	readyW.Close() // the child holds the write end now: EOF if it dies
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	line := make(chan error, 1)
	go func() {
		b := make([]byte, 16)
		n, err := ready.Read(b)
		switch {
		case n > 0 && strings.HasPrefix(string(b[:n]), "READY"):
			line <- nil
		case err == nil:
			line <- fmt.Errorf("unexpected %q on the readiness pipe", b[:n])
		default:
			line <- err
		}
	}()
	pid := cmd.Process.Pid
	var why error
	select {
	case err := <-line:
		if err == nil {
			return pid, nil
		}
		// The pipe closed without a word: the child exited, or closed it.
		select {
		case err := <-exited:
			return 0, fmt.Errorf("herd: upgrade: new process %d exited before it was ready: %v", pid, exitStatus(err))
		case <-time.After(time.Second):
			why = fmt.Errorf("herd: upgrade: new process %d closed its readiness pipe without a word (%v)", pid, err)
		}
	case err := <-exited:
		return 0, fmt.Errorf("herd: upgrade: new process %d exited before it was ready: %v", pid, exitStatus(err))
	case <-ctx.Done():
		why = fmt.Errorf("herd: upgrade: new process %d not ready in time: %w", pid, ctx.Err())
	}
	cmd.Process.Kill()
	return 0, fmt.Errorf("%w; killed: %v", why, exitStatus(<-exited))
}

// upgradeSignals holds the channels of the running Processes for
// UpgradeSignal.
var upgradeSignals struct {
	sync.Mutex
	chans map[chan<- os.Signal]bool
}

func watchUpgradeSignal(c chan<- os.Signal) {
	upgradeSignals.Lock()
	defer upgradeSignals.Unlock()
	if upgradeSignals.chans == nil {
		upgradeSignals.chans = map[chan<- os.Signal]bool{}
	}
	upgradeSignals.chans[c] = true
	signal.Notify(c, UpgradeSignal)
}

func unwatchUpgradeSignal(c chan<- os.Signal) {
	upgradeSignals.Lock()
	defer upgradeSignals.Unlock()
	delete(upgradeSignals.chans, c)
	signal.Stop(c)
}

// startIgnoringUpgradeSignal starts cmd with UpgradeSignal ignored. An
// ignored disposition survives exec where a handler does not (the child
// would start with the default one, which terminates), and Go's runtime
// keeps an inherited SIG_IGN for SIGHUP until the program asks for the
// signal with signal.Notify: the child cannot die of it before it is
// ready. Ignoring undoes every registration for the signal, so the
// Processes' own are made again; one that arrives meanwhile is lost, as a
// second upgrade's would be refused.
func startIgnoringUpgradeSignal(cmd *exec.Cmd) error {
	upgradeSignals.Lock()
	defer upgradeSignals.Unlock()
	signal.Ignore(UpgradeSignal)
	err := cmd.Start()
	for c := range upgradeSignals.chans {
		signal.Notify(c, UpgradeSignal)
	}
	return err
}

// exitStatus describes how a child ended, from cmd.Wait's error.
func exitStatus(err error) string {
	if err == nil {
		return "exit status 0"
	}
	return err.Error()
}

// childEnv is this process's environment without what describes its own
// start (inherited sockets, readiness pipe).
func childEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch k {
		case envListeners, envReady, "LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES":
			continue
		}
		env = append(env, kv)
	}
	return env
}

// reportReady tells whoever waits that every worker is bound and running:
// the parent of an upgrade through its pipe, else the service manager.
func reportReady() error {
	v := os.Getenv(envReady)
	if v == "" {
		return notify("READY=1")
	}
	os.Unsetenv(envReady)
	var fd int
	if _, err := fmt.Sscan(v, &fd); err != nil {
		return fmt.Errorf("herd: %s=%q: %w", envReady, v, err)
	}
	f := os.NewFile(uintptr(fd), "herd readiness pipe")
	defer f.Close()
	_, err := f.WriteString("READY\n")
	return err
}

// closeOnExecAll marks every descriptor of this process above stderr
// close-on-exec, so that the new process starts with nothing but its
// standard streams and what ExtraFiles names. Go opens its own descriptors
// so already; this catches those the process itself inherited (from a
// shell, a supervisor, a test harness), which it would otherwise pass on.
func closeOnExecAll() {
	entries, err := os.ReadDir("/dev/fd")
	if err != nil {
		return
	}
	for _, e := range entries {
		if fd, err := strconv.Atoi(e.Name()); err == nil && fd > 2 {
			unix.CloseOnExec(fd)
		}
	}
}
