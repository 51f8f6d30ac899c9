//go:build linux

package upgrade

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/seed358e4494/herd"
	"github.com/seed358e4494/herd/internal/sdtest"
	"github.com/seed358e4494/herd/internal/soak"
)

// The test binary doubles as the new executable of an upgrade: with
// HERD_TEST_CHILD set, TestMain runs it as that process instead of the
// tests.
const envTestChild = "HERD_TEST_CHILD"

func TestMain(m *testing.M) {
	if mode := os.Getenv(envTestChild); mode != "" {
		os.Exit(upgradeChild(mode))
	}
	os.Exit(m.Run())
}

func echo(c *herd.Conn, msg []byte) { c.Send(msg) }

func quietLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelError}))
}

// upgradeChild is the new process: it records the descriptors it started
// with, then serves the parent's worker (same Name and Addr) until SIGTERM.
// Modes: "serve"; "hup" (sends itself SIGHUP first, then serves); "exit"
// (exits with status 3 before it is ready); "hang" (never ready);
// "steer-exit" (serves the parent's sockets on one loop, steering the
// group to it, and exits before it is ready).
func upgradeChild(mode string) int {
	report := os.Getenv("HERD_TEST_REPORT")
	if mode == "hup" {
		// Before anything else of this program, and after Go's runtime
		// has set up its handlers: the signal must find it ignored.
		syscall.Kill(os.Getpid(), syscall.SIGHUP)
		// And the test's, sent from outside, must come before this
		// process is ready (a loaded machine could delay it past that,
		// where a SIGHUP rightly upgrades): it says when it has.
		for deadline := time.Now().Add(time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
			if _, err := os.Stat(report + ".hup"); err == nil {
				break
			}
		}
	}
	fds := openDescriptors()
	os.WriteFile(report, []byte(fmt.Sprintf("pid %d\n%s", os.Getpid(), strings.Join(fds, "\n"))), 0o644)
	switch mode {
	case "exit":
		return 3
	case "steer-exit":
		w := &herd.Worker{Name: "up", Addr: os.Getenv("HERD_TEST_ADDR"), Count: 1, ReusePort: true, OnMessage: echo, Logger: quietLogger()}
		if _, err := w.ListenFiles(takeEnv().byKey[key(w)]); err != nil {
			return 1
		}
		go w.Run(context.Background())
		for w.Loops() == nil {
			time.Sleep(time.Millisecond)
		}
		return 3
	case "hang":
		time.Sleep(time.Minute)
		return 0
	}
	w := &herd.Worker{Name: "up", Addr: os.Getenv("HERD_TEST_ADDR"), Count: 2, ReusePort: true, OnMessage: echo,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	go func() {
		for w.Loops() == nil {
			time.Sleep(time.Millisecond)
		}
		f, _ := os.OpenFile(report, os.O_APPEND|os.O_WRONLY, 0)
		fmt.Fprintf(f, "\nbound %s", w.ListenAddr())
		f.Close()
	}()
	if err := (&Process{Workers: []*herd.Worker{w}}).Run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		return 1
	}
	return 0
}

// openDescriptors describes this process's descriptors above 2 as
// "fd kind", kind being "listener", "socket" (any other socket) or what
// /proc says it is.
func openDescriptors() []string {
	entries, _ := os.ReadDir("/proc/self/fd")
	var out []string
	for _, e := range entries {
		fd, err := strconv.Atoi(e.Name())
		if err != nil || fd <= 2 {
			continue
		}
		target, err := os.Readlink(filepath.Join("/proc/self/fd", e.Name()))
		if err != nil {
			continue // the directory ReadDir read, closed since
		}
		kind := target
		if strings.HasPrefix(target, "socket:") {
			kind = "socket"
			if v, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN); err == nil && v == 1 {
				kind = "listener"
			}
		}
		out = append(out, fmt.Sprintf("%d %s", fd, kind))
	}
	return out
}

// execSelf skips a test that runs this test binary as another process
// where that cannot be done: under qemu-user without binfmt_misc, the
// binary is not the host's and exec fails.
func execSelf(t *testing.T) {
	execSelfOnce.Do(func() {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), envTestChild+"=")
		execSelfErr = cmd.Run()
	})
	if execSelfErr != nil {
		t.Skipf("cannot run the test binary as a child process here (emulated?): %v", execSelfErr)
	}
}

var (
	execSelfOnce sync.Once
	execSelfErr  error
)

func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// upgradeFixture runs a Process whose worker the test child serves too.
type upgradeFixture struct {
	p      *Process
	w      *herd.Worker
	addr   string
	report string
	exited chan struct{} // closed when Run returned, with err
	err    error
}

func startUpgradeFixture(t *testing.T, childMode string) *upgradeFixture {
	execSelf(t)
	w := &herd.Worker{Name: "up", Addr: "text://127.0.0.1:0", Count: 2, ReusePort: true, OnMessage: echo, Logger: quietLogger()}
	if err := w.Listen(); err != nil {
		t.Fatal(err)
	}
	f := &upgradeFixture{w: w, addr: w.ListenAddr().String(), report: filepath.Join(t.TempDir(), "child"), exited: make(chan struct{})}
	// The child binds nothing itself: the address it is given is the
	// parent's Addr (port 0), and it must take the parent's sockets.
	t.Setenv(envTestChild, childMode)
	t.Setenv("HERD_TEST_ADDR", w.Addr)
	t.Setenv("HERD_TEST_REPORT", f.report)
	f.p = &Process{Workers: []*herd.Worker{w}, Executable: os.Args[0], Args: []string{"-test.run=^$"}, ReadyTimeout: 2 * time.Second, UpgradeGrace: 100 * time.Millisecond}
	ctx, cancel := context.WithCancel(context.Background())
	go func() { f.err = f.p.Run(ctx); close(f.exited) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-f.exited:
		case <-time.After(10 * time.Second):
			t.Error("the parent did not stop")
		}
	})
	waitFor(t, 5*time.Second, "the process serving", func() bool {
		f.p.mu.Lock()
		defer f.p.mu.Unlock()
		return f.p.serving
	})
	return f
}

// child reads the PID the child reported, its descriptors, and the
// address it serves once it does.
func (f *upgradeFixture) child(t *testing.T) (pid int, fds []string, bound string) {
	b, err := os.ReadFile(f.report)
	if err != nil {
		t.Fatalf("no report from the child: %v", err)
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	pid, _ = strconv.Atoi(strings.TrimPrefix(lines[0], "pid "))
	for _, l := range lines[1:] {
		if a, ok := strings.CutPrefix(l, "bound "); ok {
			bound = a
		} else if l != "" {
			fds = append(fds, l)
		}
	}
	return pid, fds, bound
}

// churn makes short connections to addr, each a line echoed, from n
// goroutines, and counts those served and those that failed.
type churn struct {
	served atomic.Int64
	stop   atomic.Bool
	wg     sync.WaitGroup
	mu     sync.Mutex
	errs   []error
}

func startChurn(addr string, n int) *churn {
	ch := &churn{}
	for i := range n {
		ch.wg.Add(1)
		go func() {
			defer ch.wg.Done()
			for j := 0; !ch.stop.Load(); j++ {
				if err := shortConn(addr, fmt.Sprintf("c%d-%d", i, j)); err != nil {
					ch.mu.Lock()
					ch.errs = append(ch.errs, err)
					ch.mu.Unlock()
					return
				}
				ch.served.Add(1)
			}
		}()
	}
	return ch
}

// end stops the churn and returns its failures.
func (ch *churn) end() []error {
	ch.stop.Store(true)
	ch.wg.Wait()
	ch.mu.Lock()
	defer ch.mu.Unlock()
	return ch.errs
}

func shortConn(addr, line string) error {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return fmt.Errorf("dial: %w", err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write([]byte(line + "\n")); err != nil {
		return fmt.Errorf("%s: write: %w", line, err)
	}
	got, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || got != line+"\n" {
		return fmt.Errorf("%s: got %q, %v", line, got, err)
	}
	return nil
}

// serves checks that one connection to addr gets its line echoed.
func serves(t *testing.T, addr, line string) {
	t.Helper()
	if err := shortConn(addr, line); err != nil {
		t.Fatal(err)
	}
}

// TestUpgradeUnderChurn upgrades while clients churn short connections:
// the new process takes the listening sockets and serves, the old one
// drains and exits, and not one connection fails. The child starts with
// the listening sockets only (and the readiness pipe).
func TestUpgradeUnderChurn(t *testing.T) {
	notified := sdtest.NotifySocket(t)
	f := startUpgradeFixture(t, "serve")
	if got := notified(10 * time.Second); got != "READY=1" {
		t.Fatalf("first notification %q, want READY=1", got)
	}
	ch := startChurn(f.addr, 100)
	defer ch.end()
	waitFor(t, 5*time.Second, "traffic", func() bool { return ch.served.Load() > 300 })
	if err := f.p.Upgrade(context.Background()); err != nil {
		t.Fatalf("Upgrade: %v", err)
	}
	if err := f.p.Upgrade(context.Background()); !errors.Is(err, ErrNotServing) {
		t.Errorf("a second Upgrade of the upgraded process: %v, want ErrNotServing", err)
	}
	select {
	case <-f.exited:
		if f.err != nil {
			t.Errorf("the old process's Run: %v", f.err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the old process did not stop after the upgrade")
	}
	pid, fds, _ := f.child(t)
	// The service manager is told: reloading, then the new main process,
	// ready. The old process, no longer the main one, says no more, and
	// the child reported its readiness to the parent, not to systemd.
	if got := notified(time.Second); !strings.HasPrefix(got, "RELOADING=1\nMONOTONIC_USEC=") {
		t.Errorf("notification at the upgrade %q, want RELOADING=1 with MONOTONIC_USEC", got)
	}
	if got, want := notified(time.Second), fmt.Sprintf("MAINPID=%d\nREADY=1", pid); got != want {
		t.Errorf("notification once the child is ready %q, want %q", got, want)
	}
	if got := notified(200 * time.Millisecond); got != "" {
		t.Errorf("unexpected notification %q", got)
	}
	defer func() {
		syscall.Kill(pid, syscall.SIGTERM)
		waitFor(t, 10*time.Second, "the child to exit", func() bool { return gone(pid) })
	}()
	before := ch.served.Load()
	waitFor(t, 5*time.Second, "traffic served by the new process", func() bool { return ch.served.Load() > before+300 })
	for _, err := range ch.end() {
		t.Error(err)
	}
	t.Logf("%d short connections across the upgrade; the child (pid %d) started with: %v", ch.served.Load(), pid, fds)
	listeners := 0
	for _, d := range fds {
		switch kind := strings.SplitN(d, " ", 2)[1]; {
		case kind == "listener":
			listeners++
		case strings.HasPrefix(kind, "pipe:") && strings.HasPrefix(d, "3 "): // the readiness pipe
		default:
			t.Errorf("the child inherited descriptor %s", d)
		}
	}
	if listeners != 2 {
		t.Errorf("the child inherited %d listeners, want the 2 of the ReusePort group", listeners)
	}
	if _, _, bound := f.child(t); bound != f.addr {
		t.Errorf("the child serves %q, want the parent's %s", bound, f.addr)
	}
}

// TestUpgradeFailures: a new process that exits before it is ready, or is
// never ready, is reported with its exit status, and the old process goes
// on serving and can upgrade later.
func TestUpgradeFailures(t *testing.T) {
	for _, mode := range []string{"exit", "hang"} {
		t.Run(mode, func(t *testing.T) {
			f := startUpgradeFixture(t, mode)
			ch := startChurn(f.addr, 20)
			defer ch.end()
			start := time.Now()
			result := make(chan error, 1)
			go func() { result <- f.p.Upgrade(context.Background()) }()
			if mode == "hang" {
				// One upgrade at a time: a second one, while the first
				// waits for its child, is refused.
				time.Sleep(200 * time.Millisecond)
				if err := f.p.Upgrade(context.Background()); !errors.Is(err, ErrInProgress) {
					t.Errorf("an Upgrade during another: %v, want ErrInProgress", err)
				}
			}
			err := <-result
			t.Logf("Upgrade after %v: %v", time.Since(start).Round(time.Millisecond), err)
			switch {
			case err == nil:
				t.Fatal("Upgrade succeeded")
			case mode == "exit" && !strings.Contains(err.Error(), "exit status 3"):
				t.Errorf("the error does not give the child's exit status: %v", err)
			case mode == "hang" && !strings.Contains(err.Error(), "not ready"):
				t.Errorf("the error does not say the child was not ready: %v", err)
			}
			before := ch.served.Load()
			waitFor(t, 5*time.Second, "the old process serving on", func() bool { return ch.served.Load() > before+100 })
			for _, err := range ch.end() {
				t.Error(err)
			}
			select {
			case <-f.exited:
				t.Fatalf("the old process stopped: %v", f.err)
			default:
			}
			if pid, _, _ := f.child(t); pid > 0 && unix.Kill(pid, 0) == nil {
				t.Errorf("the failed child %d still runs", pid)
			}
		})
	}
}

// TestUpgradeFailureResteers: a new process with one loop steers the
// shared SO_REUSEPORT group to its own loop, then dies before it is ready;
// the old process, serving on with two loops, steers the group over both
// again: new connections reach both of its loops.
func TestUpgradeFailureResteers(t *testing.T) {
	f := startUpgradeFixture(t, "steer-exit")
	if err := f.p.Upgrade(context.Background()); err == nil {
		t.Fatal("Upgrade succeeded")
	}
	accepted := func() []uint64 {
		var n []uint64
		for _, l := range f.w.Stats().Loops {
			n = append(n, l.Accepted)
		}
		return n
	}
	before := accepted()
	const n = 400
	for i := range n {
		serves(t, f.addr, fmt.Sprintf("c%d", i))
	}
	after := accepted()
	for i := range after {
		if got := after[i] - before[i]; got < n/4 {
			t.Errorf("loop %d accepted %d of %d new connections after the failed upgrade (%v before, %v after)", i, got, n, before, after)
		}
	}
}

// TestSystemdSocketActivation: a process started the way systemd starts a
// socket-activated service (the socket on descriptor 3, LISTEN_FDS=1,
// LISTEN_PID its own PID) serves that socket, without binding anew, for the
// worker whose address it is bound to.
func TestSystemdSocketActivation(t *testing.T) {
	execSelf(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	file, err := ln.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // the duplicate in file stays open, and listening
	report := filepath.Join(t.TempDir(), "child")
	// sh's $$ is the PID that exec keeps: LISTEN_PID names the service's
	// own process, as systemd sets it after fork.
	cmd := exec.Command("sh", "-c", `LISTEN_PID=$$ exec "$0" -test.run=^$`, os.Args[0])
	cmd.ExtraFiles = []*os.File{file}
	cmd.Env = append(os.Environ(), envTestChild+"=serve", "HERD_TEST_ADDR=text://"+addr, "HERD_TEST_REPORT="+report, "LISTEN_FDS=1")
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	file.Close()
	defer func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
	}()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	// Binding anew would fail (the socket systemd passed holds the port,
	// outside any SO_REUSEPORT group) and the child would exit: an echo
	// means the worker serves the passed socket.
	br := bufio.NewReader(c)
	fmt.Fprintln(c, "served on the socket systemd passed")
	if got, err := br.ReadString('\n'); err != nil || got != "served on the socket systemd passed\n" {
		t.Fatalf("echo: %q, %v", got, err)
	}
}

// TestUpgradeEarlySIGHUP: 50 upgrades (10 without HERD_SOAK), each child sent SIGHUP the moment
// it appears (found by polling this process's children, so it may even be
// between fork and exec) and sending itself one as its first instruction.
// Every child survives, becomes ready and serves, and none upgrades
// because of those signals. Once ready, a child upgrades on SIGHUP as
// before. Without the inherited SIG_IGN, the first child dies of the
// signal (Go's runtime terminates on SIGHUP until signal.Notify asks for
// it).
func TestUpgradeEarlySIGHUP(t *testing.T) {
	upgrades := 50
	if !soak.Enabled() {
		upgrades = 10 // without the fix, 1 child in 5 died
	}
	for i := range upgrades {
		ok := t.Run(strconv.Itoa(i), func(t *testing.T) {
			f := startUpgradeFixture(t, "hup")
			before := map[int]bool{}
			for _, pid := range childPIDs() {
				before[pid] = true
			}
			stop := make(chan struct{})
			signaled := make(chan int, 1)
			go func() {
				pid := signalNewChild(before, syscall.SIGHUP, stop)
				os.WriteFile(f.report+".hup", nil, 0o644) // the child waits for it
				signaled <- pid
			}()
			err := f.p.Upgrade(context.Background())
			close(stop)
			hit := <-signaled
			if err != nil {
				t.Fatalf("Upgrade: %v", err)
			}
			pid, _, _ := f.child(t)
			if hit != pid {
				t.Fatalf("SIGHUP went to %d, the child is %d", hit, pid)
			}
			waitFor(t, 5*time.Second, "the old process to stop", func() bool {
				select {
				case <-f.exited:
					return true
				default:
					return false
				}
			})
			serves(t, f.addr, "served by the child")
			if i < upgrades-1 {
				syscall.Kill(pid, syscall.SIGKILL) // its graceful stop takes a second
				waitFor(t, 10*time.Second, "the child to exit", func() bool { return gone(pid) })
				if now, _, _ := f.child(t); now != pid {
					t.Fatalf("the child %d started another process, %d", pid, now)
				}
				return
			}
			// The early signals were dropped, not kept for later: no
			// upgrade follows. A SIGHUP now, once the child is ready,
			// upgrades it.
			time.Sleep(500 * time.Millisecond)
			if now, _, _ := f.child(t); now != pid {
				t.Fatalf("the child %d upgraded to %d without being asked", pid, now)
			}
			syscall.Kill(pid, syscall.SIGHUP)
			var grandchild int
			waitFor(t, 10*time.Second, "the child to upgrade on SIGHUP", func() bool {
				b, err := os.ReadFile(f.report)
				if err != nil {
					return false
				}
				grandchild, _ = strconv.Atoi(strings.TrimPrefix(strings.SplitN(string(b), "\n", 2)[0], "pid "))
				return grandchild != 0 && grandchild != pid
			})
			defer func() {
				syscall.Kill(grandchild, syscall.SIGTERM)
				waitFor(t, 10*time.Second, "the grandchild to exit", func() bool { return gone(grandchild) })
			}()
			waitFor(t, 10*time.Second, "the child to stop after its upgrade", func() bool { return gone(pid) })
			serves(t, f.addr, "served by the grandchild")
		})
		if !ok {
			return
		}
	}
}

// childPIDs lists this process's child processes.
func childPIDs() []int {
	var pids []int
	tasks, _ := filepath.Glob("/proc/self/task/*/children")
	for _, p := range tasks {
		b, _ := os.ReadFile(p)
		for _, f := range strings.Fields(string(b)) {
			if pid, err := strconv.Atoi(f); err == nil {
				pids = append(pids, pid)
			}
		}
	}
	return pids
}

// signalNewChild sends sig to the first child of this process not in
// before, the moment it appears, and returns its PID; 0 if none appeared
// before stop closed.
func signalNewChild(before map[int]bool, sig syscall.Signal, stop <-chan struct{}) int {
	for {
		for _, pid := range childPIDs() {
			if !before[pid] {
				syscall.Kill(pid, sig)
				return pid
			}
		}
		select {
		case <-stop:
			return 0
		default:
		}
	}
}

// gone reports whether the process has exited: no such process, or a
// zombie that nobody reaps (an orphan in a container whose init does not).
func gone(pid int) bool {
	if unix.Kill(pid, 0) != nil {
		return true
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	_, after, _ := strings.Cut(string(b), ") ")
	return strings.HasPrefix(after, "Z")
}

// TestListenedTooEarly: a new process whose worker listened on its own
// (Worker.Listen, which takes no inherited socket) before the Process
// did fails with a clear error instead of serving a port of its own while
// the sockets handed over go unserved; a worker the old process handed
// nothing for may have listened already.
func TestListenedTooEarly(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	f, err := ln.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	early := &herd.Worker{Name: "early", Addr: "text://127.0.0.1:0", OnMessage: echo, Logger: quietLogger()}
	other := &herd.Worker{Name: "other", Addr: "text://127.0.0.1:0", OnMessage: echo, Logger: quietLogger()}
	for _, w := range []*herd.Worker{early, other} {
		if err := w.Listen(); err != nil {
			t.Fatal(err)
		}
		defer w.Shutdown(context.Background())
	}
	handed, _ := json.Marshal(map[string][]int{key(early): {int(f.Fd())}})
	t.Setenv(envListeners, string(handed))
	pr, pw, _ := os.Pipe() // the readiness pipe, without which the sockets do not count
	defer pr.Close()
	defer pw.Close()
	t.Setenv(envReady, fmt.Sprint(pw.Fd()))
	err = (&Process{Workers: []*herd.Worker{other, early}}).Listen()
	if err == nil || !strings.Contains(err.Error(), `worker "early"`) || !strings.Contains(err.Error(), "before Process.Listen") {
		t.Fatalf("Listen: %v, want an error naming the worker that listened early", err)
	}
	if _, ok := os.LookupEnv(envListeners); ok {
		t.Errorf("%s is still set after Listen read it", envListeners)
	}
}

// TestFailedChildKeepsUnixSocket: an upgrade's new process that takes the
// old one's unix socket and then fails (another worker cannot bind) leaves
// the socket's file in place: the old process, rolled back, is reached
// there. Before, the failing child removed it. The child runs in-process,
// with the environment startChild gives it.
func TestFailedChildKeepsUnixSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "u.sock")
	parent := &herd.Worker{Name: "u", Addr: "unix://" + path, Count: 1, OnMessage: echo, Logger: quietLogger()}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- parent.Run(ctx) }()
	defer func() { cancel(); <-done }()
	waitFor(t, 5*time.Second, "parent loops", func() bool { return parent.Loops() != nil })

	h, err := parent.Handover()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Rollback()
	fd, _ := unix.Dup(int(h.Files[0].Fd())) // what the child inherits
	busy, _ := net.Listen("tcp", "127.0.0.1:0")
	defer busy.Close()
	env, _ := json.Marshal(map[string][]int{key(parent): {fd}})
	t.Setenv(envListeners, string(env))
	pr, pw, _ := os.Pipe() // the readiness pipe, without which the sockets do not count
	defer pr.Close()
	defer pw.Close()
	t.Setenv(envReady, fmt.Sprint(pw.Fd()))

	child := []*herd.Worker{
		{Name: "u", Addr: parent.Addr, Count: 1, OnMessage: echo, Logger: quietLogger()},
		{Name: "new", Addr: "text://" + busy.Addr().String(), Count: 1, OnMessage: echo, Logger: quietLogger()},
	}
	if err := (&Process{Workers: child}).Run(context.Background()); err == nil {
		t.Fatal("the child's Run should fail (address in use)")
	}
	h.Rollback() // as Upgrade does when the child exits before it is ready
	if c, err := net.DialTimeout("unix", path, time.Second); err != nil {
		t.Errorf("after the failed upgrade the parent cannot be reached: %v", err)
	} else {
		c.Close()
	}
}

// TestRunTwice: a second Run of a Process returns ErrRunning and touches
// nothing. Before, it reported readiness again on the pipe descriptor the
// first Run had closed (writing into and closing whatever file had that
// number now), and marked the process not serving, so that Upgrade
// refused for good while the first Run served.
func TestRunTwice(t *testing.T) {
	pr, pw, _ := os.Pipe()
	defer pr.Close()
	readyFD, _ := unix.Dup(int(pw.Fd()))
	pw.Close()
	t.Setenv(envReady, fmt.Sprint(readyFD))

	w := &herd.Worker{Name: "twice", Addr: "text://127.0.0.1:0", Count: 1, OnMessage: echo, Logger: quietLogger()}
	p := &Process{Workers: []*herd.Worker{w}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	defer func() { cancel(); <-done }()
	if b, _ := io.ReadAll(pr); string(b) != "READY\n" {
		t.Fatalf("first Run reported %q", b)
	}
	// The number is free again: whatever the process opens next may get
	// it (here, typically, the worker's own epoll descriptor).
	fdPath := fmt.Sprintf("/proc/self/fd/%d", readyFD)
	var victim *os.File
	if _, err := os.Readlink(fdPath); err != nil {
		victim, _ = os.CreateTemp(t.TempDir(), "victim")
		defer victim.Close()
	}
	before, _ := os.Readlink(fdPath)
	if err := p.Run(context.Background()); !errors.Is(err, ErrRunning) {
		t.Fatalf("second Run: %v, want ErrRunning", err)
	}
	if after, err := os.Readlink(fdPath); err != nil || after != before {
		t.Errorf("the second Run closed descriptor %d (%s), which is not its pipe any more: now %q, %v", readyFD, before, after, err)
	}
	if victim != nil {
		if b, _ := os.ReadFile(victim.Name()); len(b) != 0 {
			t.Errorf("the second Run wrote %q into an unrelated file", b)
		}
	}
	if err := shortConn(w.ListenAddr().String(), "still"); err != nil {
		t.Errorf("the first Run's worker: %v", err)
	}
	p.mu.Lock()
	serving := p.serving
	p.mu.Unlock()
	if !serving {
		t.Error("the first Run still serves, yet the Process says it does not (Upgrade would refuse)")
	}
}

// TestStrayListenersEnv: a HERD_LISTENERS that does not come with an
// upgrade's readiness pipe (a stale or hand-set variable), or that names
// descriptors that are not sockets, does not make Listen take or close
// them: here a pipe of the program's (1 would be stdout).
func TestStrayListenersEnv(t *testing.T) {
	for _, withPipe := range []bool{false, true} {
		t.Run(fmt.Sprint("readiness pipe ", withPipe), func(t *testing.T) {
			pr, pw, _ := os.Pipe()
			defer pr.Close()
			defer pw.Close()
			n, _ := unix.Dup(int(pw.Fd()))
			defer unix.Close(n)
			t.Setenv(envListeners, fmt.Sprintf(`{"nobody":[%d],"stdout":[1]}`, n))
			if withPipe {
				t.Setenv(envReady, fmt.Sprint(pw.Fd()))
			}
			w := &herd.Worker{Name: "stray", Addr: "text://127.0.0.1:0", Count: 1, OnMessage: echo, Logger: quietLogger()}
			p := &Process{Workers: []*herd.Worker{w}}
			if err := p.Listen(); err != nil {
				t.Fatal(err)
			}
			defer w.Shutdown(context.Background())
			for _, fd := range []int{n, 1} {
				if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err != nil {
					t.Errorf("Process.Listen closed descriptor %d, which is not a socket handed over: %v", fd, err)
				}
			}
		})
	}
}

// TestStopDuringUpgrade: SIGTERM while a SIGHUP upgrade is under way ends
// the upgrade: the new process is killed, never announced, and the old one
// stops. Before, the new one became the service's main process (MAINPID,
// READY=1 after STOPPING=1) and served on after the operator had asked
// the service to stop.
func TestStopDuringUpgrade(t *testing.T) {
	execSelf(t)
	guard := make(chan os.Signal, 4) // this test process never dies of its own signals
	signal.Notify(guard, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(guard)
	w := &herd.Worker{Name: "up", Addr: "text://127.0.0.1:0", Count: 2, ReusePort: true, OnMessage: echo,
		StopTimeout: 5 * time.Second, Logger: quietLogger()}
	if err := w.Listen(); err != nil {
		t.Fatal(err)
	}
	report := filepath.Join(t.TempDir(), "child")
	t.Setenv(envTestChild, "serve")
	t.Setenv("HERD_TEST_ADDR", w.Addr)
	t.Setenv("HERD_TEST_REPORT", report)
	p := &Process{Workers: []*herd.Worker{w}, Executable: os.Args[0], Args: []string{"-test.run=^$"},
		ReadyTimeout: 5 * time.Second, UpgradeGrace: 100 * time.Millisecond}
	runDone := make(chan error, 1)
	go func() { runDone <- p.Run(context.Background()) }()
	waitFor(t, 5*time.Second, "serving", func() bool { p.mu.Lock(); defer p.mu.Unlock(); return p.serving })
	idle, err := net.Dial("tcp", w.ListenAddr().String()) // the graceful stop takes a while
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()

	before := map[int]bool{}
	for _, pid := range childPIDs() {
		before[pid] = true
	}
	syscall.Kill(os.Getpid(), Signal)
	waitFor(t, 5*time.Second, "upgrade started", p.upgrading.Load)
	var started []int
	waitFor(t, 5*time.Second, "the new process", func() bool {
		for _, pid := range childPIDs() {
			if !before[pid] {
				started = append(started, pid)
			}
		}
		return len(started) > 0
	})
	syscall.Kill(os.Getpid(), syscall.SIGTERM) // the operator stops the service
	time.Sleep(time.Second)                    // the new process would be ready by now, within the old one's graceful stop
	idle.Close()
	select {
	case <-runDone:
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return")
	}
	for _, pid := range started {
		if !gone(pid) {
			t.Errorf("SIGTERM during the upgrade: the old process stopped, the new process %d serves on", pid)
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}
