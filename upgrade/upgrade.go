//go:build linux || darwin || freebsd

// Package upgrade runs herd workers as one program that upgrades itself to
// a new executable without failing a connection, as tableflip does for
// net/http servers. It is herd.RunAll (graceful stop on SIGINT or SIGTERM,
// systemd readiness) plus three things a program asks for by using it:
//
//   - Signal (SIGHUP) or Process.Upgrade starts the executable again and
//     hands it the workers' listening sockets (herd.Worker.Handover);
//   - a process started so serves the sockets its parent handed over
//     (herd.Worker.ListenFiles) and tells its parent when it is ready;
//   - a process started by systemd's socket activation (LISTEN_FDS) serves
//     the sockets passed to it for the workers whose addresses they are
//     bound to.
//
// Under systemd, use Type=notify and ExecReload=/bin/kill -HUP $MAINPID.
package upgrade

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/seed358e4494/herd"
	"github.com/seed358e4494/herd/internal/service"
	"github.com/seed358e4494/herd/internal/sock"
)

// Signal starts an upgrade (Process.Upgrade); systemd's
// ExecReload=kill -HUP $MAINPID sends it.
const Signal = syscall.SIGHUP

// DefaultReadyTimeout is the wait for a new process when
// Process.ReadyTimeout is zero.
const DefaultReadyTimeout = 30 * time.Second

// Errors of an upgrade.
var (
	// ErrInProgress is returned by Upgrade while another runs.
	ErrInProgress = errors.New("upgrade: an upgrade is already in progress")
	// ErrNotServing is returned by Upgrade before Run has bound every
	// worker, or once the process is stopping or has been upgraded.
	ErrNotServing = errors.New("upgrade: the process is not serving")
	// ErrRunning is returned by a second Run of a Process.
	ErrRunning = errors.New("upgrade: the Process runs already")
)

// Environment of an upgrade's new process. Run removes both once read, so
// that no program this one starts takes them.
const (
	// envListeners names the listening sockets handed over, as JSON: each
	// worker's key (see key) and its descriptors.
	envListeners = "HERD_LISTENERS"
	// envReady is the descriptor of the pipe on which the new process says
	// it is ready (it writes one line, then closes it).
	envReady = "HERD_UPGRADE_READY"
)

// A Process runs workers as one program and upgrades it. Run is
// herd.RunAll with upgrades: an upgrade (Signal, or Upgrade) starts the
// executable again, with the same arguments and environment, and hands it
// the workers' listening sockets; the new process's Run serves them for
// workers with the same Name and Addr. Once the new process reports that
// it is ready, this one accepts nothing more, serves the connections it
// has for UpgradeGrace, then stops gracefully as on SIGTERM (each worker
// within its StopTimeout; a WebSocket connection gets a close frame 1001,
// Going Away). If the new process fails to start, exits, or is not ready
// within ReadyTimeout, this one goes on serving and logs why. Under
// systemd (Type=notify), the old process reports RELOADING=1 when the
// upgrade begins, and MAINPID with READY=1 once the new one serves.
//
// The new process starts with Signal ignored, and ignores it until it is
// ready: a SIGHUP that reaches it early (kill -HUP by name, a terminal's
// hangup) neither kills it nor upgrades it again. To pass that on, the old
// process ignores the signal while it starts the new one, which undoes
// signal.Notify registrations for it other than the Processes' own (an
// application that has its own use for SIGHUP cannot share it with
// upgrades anyway).
type Process struct {
	Workers []*herd.Worker
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
	// Logger receives the process's logs. Nil means the first worker's
	// Logger, else slog.Default().
	Logger *slog.Logger

	listenOnce sync.Once
	listenErr  error
	readyFD    int // the readiness pipe of an upgrade's new process, else -1

	mu        sync.Mutex
	started   bool               // Run was called
	serving   bool               // every worker is bound and runs
	upgrading atomic.Bool        // one upgrade at a time
	upgraded  chan struct{}      // closed once a new process took over
	stop      context.CancelFunc // ends RunAll's context: the graceful stop
	abort     context.CancelFunc // ends the upgrade under way, if one is
}

// Run runs the workers as a Process with the zero configuration does.
func Run(ctx context.Context, workers ...*herd.Worker) error {
	return (&Process{Workers: workers}).Run(ctx)
}

func (p *Process) logger() *slog.Logger {
	if p.Logger != nil {
		return p.Logger
	}
	if len(p.Workers) > 0 && p.Workers[0].Logger != nil {
		return p.Workers[0].Logger
	}
	return slog.Default()
}

// Run serves the sockets the process inherited (from an upgrade's parent,
// else from systemd) and runs the workers as herd.RunAll does, until ctx
// ends, SIGINT or SIGTERM, or an upgrade's grace ends. It upgrades on
// Signal.
func (p *Process) Run(ctx context.Context) error {
	ctx, stop := context.WithCancel(ctx)
	defer stop()
	upgraded := make(chan struct{})
	p.mu.Lock()
	if p.started {
		p.mu.Unlock()
		return ErrRunning
	}
	p.started, p.stop, p.upgraded = true, stop, upgraded
	p.mu.Unlock()

	if err := p.Listen(); err != nil {
		return err
	}
	hup := make(chan os.Signal, 1)
	// The new process of an upgrade started with Signal ignored, and
	// watches it only once it is ready (see startChild).
	if p.readyFD < 0 {
		watchSignal(hup)
	}
	defer unwatchSignal(hup)

	runDone := make(chan struct{})
	defer close(runDone)
	go func() {
		for {
			select {
			case <-hup:
				go func() {
					if err := p.Upgrade(ctx); err != nil && !errors.Is(err, ErrInProgress) {
						p.logger().Error("herd: upgrade failed; this process goes on serving", "err", err)
					}
				}()
			case <-runDone:
				return
			}
		}
	}()
	hooks := service.Hooks{
		Ready: func() error {
			p.setServing(true)
			if p.readyFD < 0 {
				return service.Notify("READY=1")
			}
			err := reportReady(p.readyFD)
			p.readyFD = -1
			watchSignal(hup)
			return err
		},
		Stopping: func() error {
			p.mu.Lock()
			p.serving = false // no upgrade of a process that stops
			if p.abort != nil {
				p.abort() // an upgrade under way ends: its new process is killed
			}
			p.mu.Unlock()
			select {
			case <-upgraded:
				return nil // not the main process any more: the new one speaks
			default:
				return service.Notify("STOPPING=1")
			}
		},
	}
	err := herd.RunAll(service.WithHooks(ctx, hooks), p.Workers...)
	p.setServing(false)
	return err
}

func (p *Process) setServing(v bool) {
	p.mu.Lock()
	p.serving = v
	p.mu.Unlock()
}

// inheritance is what a process started with: the sockets its parent
// handed over, by worker key, those systemd passed, and the readiness pipe.
type inheritance struct {
	byKey   map[string][]*os.File
	systemd []*os.File
	readyFD int     // -1: not an upgrade's new process
	errs    []error // in what the parent handed over
}

// takeEnv reads the inheritance from the environment and removes the
// upgrade's variables from it. systemd's are left: LISTEN_PID names this
// process only.
func takeEnv() inheritance {
	in := inheritance{byKey: map[string][]*os.File{}, readyFD: -1}
	// The handed-over sockets count only with the readiness pipe: both
	// come from an upgrade's old process, and a stray variable alone must
	// not make this process take (and close) descriptors it does not own.
	if fd, err := strconv.Atoi(os.Getenv(envReady)); err == nil && fd > 2 {
		unix.CloseOnExec(fd) // for this process only, until it is ready
		in.readyFD = fd
	}
	if v := os.Getenv(envListeners); v != "" && in.readyFD > 0 {
		var m map[string][]int
		if err := json.Unmarshal([]byte(v), &m); err != nil {
			in.errs = append(in.errs, fmt.Errorf("cannot read the sockets handed over: %w", err))
		}
		seen := map[int]bool{in.readyFD: true}
		for k, fds := range m {
			for _, fd := range fds {
				if _, _, isSocket := sock.Kind(fd); fd <= 2 || seen[fd] || !isSocket {
					in.errs = append(in.errs, fmt.Errorf("descriptor %d handed over for %q is not a socket of its own: left alone", fd, k))
					continue
				}
				seen[fd] = true
				unix.CloseOnExec(fd)
				in.byKey[k] = append(in.byKey[k], os.NewFile(uintptr(fd), "herd inherited listener"))
			}
		}
	}
	os.Unsetenv(envListeners)
	os.Unsetenv(envReady)
	if pid, _ := strconv.Atoi(os.Getenv("LISTEN_PID")); pid == os.Getpid() {
		n, _ := strconv.Atoi(os.Getenv("LISTEN_FDS"))
		for fd := 3; fd < 3+n; fd++ {
			unix.CloseOnExec(fd)
			in.systemd = append(in.systemd, os.NewFile(uintptr(fd), "systemd socket"))
		}
	}
	return in
}

// key names a worker's listeners across an upgrade: the new process, run
// with the same arguments, builds its workers with the same Name and Addr.
func key(w *herd.Worker) string { return w.Name + "\x00" + w.Addr }

// Listen makes every worker listen, on the sockets the process inherited
// where it has them, so that their ListenAddr is known before Run (which
// calls it when it has not been called). Call it instead of the workers'
// own Listen, which takes no inherited socket: a worker already listening
// when a new process's Listen runs is an error, as the sockets its parent
// handed over would go unserved. If a worker cannot listen, Listen shuts
// them all down and returns why; it reads the environment once, and
// returns the same result when called again.
//
// A worker gets the sockets the parent handed over under its Name and
// Addr, else those systemd passed that are bound to its address, else new
// ones. The handed-over sockets no worker took are closed (the new
// executable serves fewer addresses); systemd's stay open, as the unit may
// pass sockets for other uses.
func (p *Process) Listen() error {
	p.listenOnce.Do(func() {
		in := takeEnv()
		p.readyFD = in.readyFD
		for _, err := range in.errs {
			p.logger().Warn("herd: upgrade: "+err.Error(), "variable", envListeners)
		}
		if p.listenErr = p.listen(in); p.listenErr != nil {
			for _, w := range p.Workers {
				w.Shutdown(context.Background())
			}
		}
	})
	return p.listenErr
}

func (p *Process) listen(in inheritance) error {
	var err error
	for _, w := range p.Workers {
		files, fromParent := in.byKey[key(w)]
		delete(in.byKey, key(w))
		if !fromParent {
			files = in.systemd
		}
		var used []*os.File
		switch {
		case err != nil:
		case fromParent && w.ListenAddr() != nil:
			err = fmt.Errorf("upgrade: worker %q (%s) listened before Process.Listen and did not take the sockets the old process handed over", w.Name, w.Addr)
		default:
			used, err = w.ListenFiles(files)
		}
		if fromParent {
			closeAll(files) // the worker serves duplicates
			continue
		}
		closeAll(used)
		in.systemd = slices.DeleteFunc(in.systemd, func(f *os.File) bool { return slices.Contains(used, f) })
	}
	n := 0
	for _, files := range in.byKey {
		n += len(files)
		closeAll(files)
	}
	if n > 0 {
		p.logger().Warn("herd: closed listening sockets handed over that no worker took", "count", n)
	}
	return err
}

func closeAll(files []*os.File) {
	for _, f := range files {
		f.Close()
	}
}

func (p *Process) readyTimeout() time.Duration {
	if p.ReadyTimeout > 0 {
		return p.ReadyTimeout
	}
	return DefaultReadyTimeout
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
// returns once it has. If the new process does not become ready, Upgrade
// kills it, returns why (with its exit status if it exited), and this
// process goes on serving. One upgrade runs at a time: ErrInProgress.
func (p *Process) Upgrade(ctx context.Context) error {
	p.mu.Lock()
	serving, upgraded := p.serving, p.upgraded
	p.mu.Unlock()
	if !serving {
		return ErrNotServing
	}
	select {
	case <-upgraded:
		return ErrNotServing
	default:
	}
	if !p.upgrading.CompareAndSwap(false, true) {
		return ErrInProgress
	}
	ctx, cancel := context.WithTimeout(ctx, p.readyTimeout())
	defer cancel()
	p.mu.Lock()
	if !p.serving { // the stop began meanwhile
		p.mu.Unlock()
		p.upgrading.Store(false)
		return ErrNotServing
	}
	p.abort = cancel // a stop that begins now ends the upgrade
	p.mu.Unlock()
	p.logNotify(service.Notify(fmt.Sprintf("RELOADING=1\nMONOTONIC_USEC=%d", service.MonotonicMicros())))
	var handovers []*herd.Handover
	child, err := p.startChild(ctx, &handovers)
	p.mu.Lock()
	defer p.mu.Unlock() // a stop waits until the upgrade is committed or undone
	p.abort = nil
	if err == nil && !p.serving {
		// Ready as the stop began: the stop wins, and the new process,
		// never announced, goes.
		child.Kill()
		<-child.exited
		err = fmt.Errorf("herd: upgrade: the process began to stop as its new process %d became ready; killed it: %w", child.Pid, ErrNotServing)
	}
	if err != nil {
		for _, h := range handovers {
			h.Rollback()
		}
		if p.serving {
			p.logNotify(service.Notify("READY=1")) // the reload is over: this process serves on
		}
		p.upgrading.Store(false)
		return err
	}
	p.logNotify(service.Notify(fmt.Sprintf("MAINPID=%d\nREADY=1", child.Pid)))
	for _, h := range handovers {
		h.Commit()
	}
	p.logger().Info("herd: upgrade: the new process is ready and this one accepts no more", "pid", child.Pid, "grace", p.UpgradeGrace)
	close(upgraded) // upgrading stays set: there is no second upgrade of this process
	go func() {
		time.Sleep(p.UpgradeGrace)
		p.stop()
	}()
	return nil
}

// startChild starts the new process with the listening sockets and waits
// until it is ready. The workers' handovers are appended to *handovers as
// they are made.
func (p *Process) startChild(ctx context.Context, handovers *[]*herd.Handover) (*child, error) {
	exe := p.Executable
	if exe == "" {
		var err error
		if exe, err = os.Executable(); err != nil {
			return nil, fmt.Errorf("herd: upgrade: %w", err)
		}
	}
	args := p.Args
	if args == nil {
		args = os.Args[1:]
	}
	ready, readyW, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("herd: upgrade: %w", err)
	}
	defer ready.Close()
	defer readyW.Close()
	files := []*os.File{readyW} // the child's descriptor 3
	names := map[string][]int{}
	for _, w := range p.Workers {
		h, err := w.Handover()
		if err != nil {
			return nil, fmt.Errorf("herd: upgrade: %w", err)
		}
		*handovers = append(*handovers, h)
		for _, f := range h.Files {
			names[key(w)] = append(names[key(w)], 3+len(files))
			files = append(files, f)
		}
	}
	listeners, _ := json.Marshal(names)
	closeOnExecAll()
	cmd := exec.Command(exe, args...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.ExtraFiles = files
	cmd.Env = append(childEnv(), envListeners+"="+string(listeners), envReady+"=3")
	if err := startIgnoringSignal(cmd); err != nil {
		return nil, fmt.Errorf("herd: upgrade: start %s: %w", exe, err)
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
			return &child{cmd.Process, exited}, nil
		}
		// The pipe closed without a word: the child exited, or closed it.
		select {
		case err := <-exited:
			return nil, fmt.Errorf("herd: upgrade: new process %d exited before it was ready: %v", pid, exitStatus(err))
		case <-time.After(time.Second):
			why = fmt.Errorf("herd: upgrade: new process %d closed its readiness pipe without a word (%v)", pid, err)
		}
	case err := <-exited:
		return nil, fmt.Errorf("herd: upgrade: new process %d exited before it was ready: %v", pid, exitStatus(err))
	case <-ctx.Done():
		why = fmt.Errorf("herd: upgrade: new process %d not ready in time: %w", pid, ctx.Err())
	}
	cmd.Process.Kill()
	return nil, fmt.Errorf("%w; killed: %v", why, exitStatus(<-exited))
}

// child is an upgrade's new process.
type child struct {
	*os.Process
	exited <-chan error // its Wait's
}

// signals holds the channels of the running Processes for Signal.
var signals struct {
	sync.Mutex
	chans map[chan<- os.Signal]bool
}

func watchSignal(c chan<- os.Signal) {
	signals.Lock()
	defer signals.Unlock()
	if signals.chans == nil {
		signals.chans = map[chan<- os.Signal]bool{}
	}
	signals.chans[c] = true
	signal.Notify(c, Signal)
}

func unwatchSignal(c chan<- os.Signal) {
	signals.Lock()
	defer signals.Unlock()
	delete(signals.chans, c)
	signal.Stop(c)
}

// startIgnoringSignal starts cmd with Signal ignored. An ignored
// disposition survives exec where a handler does not (the child would
// start with the default one, which terminates), and Go's runtime keeps an
// inherited SIG_IGN for SIGHUP until the program asks for the signal with
// signal.Notify: the child cannot die of it before it is ready. Ignoring
// undoes every registration for the signal, so the Processes' own are made
// again; one that arrives meanwhile is lost, as a second upgrade's would
// be refused.
func startIgnoringSignal(cmd *exec.Cmd) error {
	signals.Lock()
	defer signals.Unlock()
	signal.Ignore(Signal)
	err := cmd.Start()
	for c := range signals.chans {
		signal.Notify(c, Signal)
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

// reportReady tells the parent of an upgrade, through its pipe, that
// every worker is bound and running.
func reportReady(fd int) error {
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
