//go:build linux || darwin || freebsd

package herd

// Listening and accepting: addresses (TCP, IPv6, Unix sockets), MaxConns,
// descriptors not leaked.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/seed358e4494/herd/internal/soak"
	"github.com/seed358e4494/herd/internal/sock"
	"github.com/seed358e4494/herd/protocol"
)

func countFDs(t testing.TB) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatalf("reading /proc/self/fd: %v", err)
	}
	return len(ents)
}

func TestConnectCloseNoLeaks(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("counts descriptors in /proc/self/fd")
	}
	cycles := 5000
	if !soak.Enabled() {
		cycles = 1000
	}
	t.Run("shared", func(t *testing.T) { testConnectCloseNoLeaks(t, AcceptShared, cycles) })
	t.Run("round-robin", func(t *testing.T) { testConnectCloseNoLeaks(t, AcceptRoundRobin, cycles/5) })
}

func testConnectCloseNoLeaks(t *testing.T, mode AcceptMode, cycles int) {
	const conc = 8
	// Warm up the net package (its poller's descriptors) before counting.
	if ln, err := net.Listen("tcp", "127.0.0.1:0"); err == nil {
		if c, err := net.Dial("tcp", ln.Addr().String()); err == nil {
			c.Close()
		}
		ln.Close()
	}
	settle := func(what string, cond func() bool) {
		deadline := time.Now().Add(10 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	fdsBefore, gBefore := countFDs(t), runtime.NumGoroutine()

	w := &Worker{Addr: "text://127.0.0.1:0", Count: 2, Accept: mode, OnMessage: textEcho, Logger: quietLogger()}
	if err := w.Listen(); err != nil {
		t.Fatal(err)
	}
	addr := w.ListenAddr().String()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	runErr := make(chan error, 1)
	go func() { runErr <- w.Run(ctx) }()
	waitFor(t, 10*time.Second, "loops started", func() bool { return len(w.Stats().Loops) == 2 })
	fdsRunning, gRunning := countFDs(t), runtime.NumGoroutine()

	var next atomic.Int64
	var failures atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	for g := 0; g < conc; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= cycles {
					return
				}
				if err := connectCycle(addr, i); err != nil {
					failures.Add(1)
					firstErr.CompareAndSwap(nil, err)
				}
			}
		}()
	}
	wg.Wait()
	if n := failures.Load(); n > 0 {
		t.Fatalf("%d of %d cycles failed; first: %v", n, cycles, firstErr.Load())
	}
	waitFor(t, 20*time.Second, "every connection closed on the server", func() bool {
		s := sumStats(w)
		return s.active == 0 && s.closed == uint64(cycles)
	})
	if s := sumStats(w); s.accepted != uint64(cycles) {
		t.Errorf("accepted %d, want %d", s.accepted, cycles)
	}
	settle("fds", func() bool { return countFDs(t) <= fdsRunning && runtime.NumGoroutine() <= gRunning })
	if fds, g := countFDs(t), runtime.NumGoroutine(); fds > fdsRunning || g > gRunning {
		t.Errorf("after %d cycles: %d fds (was %d), %d goroutines (was %d)", cycles, fds, fdsRunning, g, gRunning)
	}

	cancel()
	select {
	case err := <-runErr:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Run did not return")
	}
	settle("fds", func() bool { return countFDs(t) <= fdsBefore && runtime.NumGoroutine() <= gBefore })
	if fds, g := countFDs(t), runtime.NumGoroutine(); fds > fdsBefore || g > gBefore {
		t.Errorf("after Run returned: %d fds (was %d before the worker), %d goroutines (was %d)", fds, fdsBefore, g, gBefore)
	}
	t.Logf("fds: %d before, %d running; goroutines: %d before, %d running", fdsBefore, fdsRunning, gBefore, gRunning)
}

// connectCycle is one short connection of a few kinds: echo, close at once,
// write without reading (the answer meets a closed socket).
func connectCycle(addr string, i int) error {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	switch i % 3 {
	case 0:
		msg := "cycle " + strconv.Itoa(i) + "\n"
		if _, err := io.WriteString(c, msg); err != nil {
			return err
		}
		got, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			return err
		}
		if got != msg {
			return fmt.Errorf("echo %q, want %q", got, msg)
		}
	case 1:
	case 2:
		if _, err := io.WriteString(c, "unread answer\n"); err != nil {
			return err
		}
	}
	return nil
}

func TestMaxConns(t *testing.T) {
	t.Parallel()
	for _, m := range listenModes {
		t.Run(m.name, func(t *testing.T) {
			testMaxConns(t, &Worker{Addr: "text://127.0.0.1:0", Count: 2, ReusePort: m.reusePort, Accept: m.accept})
		})
	}
}

func testMaxConns(t *testing.T, w *Worker) {
	const max = 10
	w.MaxConns, w.OnMessage = max, textEcho
	r := startWorker(t, w)
	cls := make([]net.Conn, max)
	brs := make([]*bufio.Reader, max)
	for i := range cls {
		cls[i] = r.dial(t)
		brs[i] = bufio.NewReader(cls[i])
		echoLine(t, cls[i], brs[i], "hello "+strconv.Itoa(i))
	}
	extra := r.dial(t)
	io.WriteString(extra, "over the limit\n") // may fail: the server closed it
	expectClosed(t, extra, "connection over MaxConns")
	if s := w.Stats(); s.Rejected != 1 {
		t.Errorf("Rejected = %d, want 1", s.Rejected)
	}
	for i := range cls {
		echoLine(t, cls[i], brs[i], "still here "+strconv.Itoa(i))
	}
	if s := sumStats(w); s.active != max || s.accepted != max {
		t.Errorf("active %d, accepted %d; want %d", s.active, s.accepted, max)
	}
	// A freed slot is taken again.
	cls[0].Close()
	waitFor(t, 10*time.Second, "the closed connection to be gone", func() bool { return sumStats(w).active == max-1 })
	again := r.dial(t)
	echoLine(t, again, bufio.NewReader(again), "in again")
	if s := w.Stats(); s.Rejected != 1 {
		t.Errorf("Rejected = %d, want 1", s.Rejected)
	}
}

func TestUnixSocket(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "h.sock")
	w := &Worker{Addr: "unix://" + path, Protocol: protocol.Text{}, Count: 2, OnMessage: textEcho}
	r := startWorker(t, w)
	if r.net != "unix" || r.addr != path {
		t.Fatalf("ListenAddr = %s %s, want unix %s", r.net, r.addr, path)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode()&os.ModeSocket == 0 {
		t.Fatalf("socket file: %v, %v", fi, err)
	}
	for i := 0; i < 4; i++ {
		c := r.dial(t)
		echoLine(t, c, bufio.NewReader(c), "over unix "+strconv.Itoa(i))
		c.Close()
	}
	waitFor(t, 10*time.Second, "connections closed", func() bool { return sumStats(w).active == 0 })
	r.cancel()
	if err := r.wait(t); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Errorf("socket file still there after stop: %v", err)
	}
}

func TestIPv6(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp6", "[::1]:0")
	if err != nil {
		t.Skipf("::1 unavailable: %v", err)
	}
	ln.Close()
	remote := make(chan net.Addr, 1)
	w := &Worker{
		Addr:      "tcp://[::1]:0",
		Protocol:  protocol.Text{},
		Count:     1,
		OnConnect: func(c *Conn) { remote <- c.RemoteAddr() },
		OnMessage: textEcho,
	}
	r := startWorker(t, w)
	if ta, ok := w.ListenAddr().(*net.TCPAddr); !ok || !ta.IP.Equal(net.IPv6loopback) || ta.Port == 0 {
		t.Fatalf("ListenAddr = %v", w.ListenAddr())
	}
	c := r.dial(t)
	echoLine(t, c, bufio.NewReader(c), "over ipv6")
	if ra, ok := (<-remote).(*net.TCPAddr); !ok || !ra.IP.Equal(net.IPv6loopback) {
		t.Errorf("RemoteAddr = %v, want ::1", ra)
	}
}

func TestAddressErrors(t *testing.T) {
	t.Parallel()
	cases := []struct {
		w    *Worker
		want string
	}{
		{&Worker{Addr: "sctp://127.0.0.1:0"}, "unknown scheme"},
		{&Worker{Addr: "text://127.0.0.1:0", Protocol: protocol.Frame{}}, "Protocol"},
		{&Worker{Addr: "frame://127.0.0.1:0", Protocol: protocol.Text{}}, "Protocol"},
		{&Worker{Addr: "unix://"}, "unix"},
		{&Worker{Addr: "tcp://127.0.0.1:notaport"}, "127.0.0.1:notaport"},
		{&Worker{Addr: "tcp://127.0.0.1:0", Count: -1}, "Worker.Count is -1: must not be negative"},
		{&Worker{Addr: "tcp://127.0.0.1:0", IdleTimeout: -time.Second}, "Worker.IdleTimeout is -1s"},
		{&Worker{Addr: "tcp://127.0.0.1:0", MaxConns: -3}, "Worker.MaxConns is -3"},
		{&Worker{Addr: "tcp://127.0.0.1:0", LingerTimeout: -time.Millisecond}, "Worker.LingerTimeout is -1ms"},
	}
	for _, tc := range cases {
		tc.w.Logger = quietLogger()
		err := tc.w.Listen()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Listen(%q): got %v, want an error mentioning %q", tc.w.Addr, err, tc.want)
		}
		if tc.w.ListenAddr() != nil {
			t.Errorf("%q: ListenAddr = %v after a failed Listen", tc.w.Addr, tc.w.ListenAddr())
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err2 := tc.w.Run(ctx)
		cancel()
		if err2 == nil || !strings.Contains(err2.Error(), tc.want) {
			t.Errorf("Run(%q): got %v, want an error mentioning %q", tc.w.Addr, err2, tc.want)
		}
	}
	// The address in use: a second worker on the same port fails to bind.
	w := &Worker{Addr: "tcp://127.0.0.1:0", Count: 1}
	r := startWorker(t, w)
	w2 := &Worker{Addr: "tcp://" + r.addr, Count: 1, Logger: quietLogger()}
	if err := w2.Listen(); err == nil {
		w2.Shutdown(context.Background())
		t.Errorf("second Listen on %s succeeded", r.addr)
	}
}

// Regression: a Listen that failed on a unix socket path removed the path,
// even though it belonged to another live server; and a stale socket file
// (nobody listening) made Listen fail instead of being replaced.
func TestUnixSocketFiles(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()

	t.Run("live", func(t *testing.T) {
		p := filepath.Join(dir, "live.sock")
		ln, err := net.Listen("unix", p)
		if err != nil {
			t.Skipf("unix sockets unavailable: %v", err)
		}
		defer ln.Close()
		w := &Worker{Addr: "unix://" + p, Count: 1, Logger: quietLogger()}
		if err := w.Listen(); err == nil {
			w.Shutdown(context.Background())
			t.Fatalf("Listen on %s succeeded while another server listens on it", p)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := w.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown after a failed Listen: %v", err)
		}
		if fi, err := os.Lstat(p); err != nil || fi.Mode()&os.ModeSocket == 0 {
			t.Fatalf("the live server's socket file is gone after a failed Listen: %v", err)
		}
		accepted := make(chan error, 1)
		go func() {
			c, err := ln.Accept()
			if err == nil {
				c.Close()
			}
			accepted <- err
		}()
		c, err := net.DialTimeout("unix", p, 5*time.Second)
		if err != nil {
			t.Fatalf("dial the live server: %v", err)
		}
		c.Close()
		select {
		case err := <-accepted:
			if err != nil {
				t.Fatalf("the live server's Accept: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("the live server accepted nothing")
		}
	})

	t.Run("stale", func(t *testing.T) {
		p := filepath.Join(dir, "stale.sock")
		ul, err := net.ListenUnix("unix", &net.UnixAddr{Name: p, Net: "unix"})
		if err != nil {
			t.Skipf("unix sockets unavailable: %v", err)
		}
		ul.SetUnlinkOnClose(false)
		ul.Close() // as a process that died would leave it
		if _, err := os.Lstat(p); err != nil {
			t.Fatalf("stale socket file: %v", err)
		}
		w := &Worker{Addr: "unix://" + p, Protocol: protocol.Text{}, Count: 1, OnMessage: textEcho}
		r := startWorker(t, w) // fails if the stale file is not replaced
		c := r.dial(t)
		echoLine(t, c, bufio.NewReader(c), "over a replaced socket file")
		c.Close()
		r.cancel()
		if err := r.wait(t); err != nil {
			t.Fatalf("Run: %v", err)
		}
		if _, err := os.Lstat(p); !os.IsNotExist(err) {
			t.Errorf("the worker's own socket file is still there after it stopped: %v", err)
		}
	})
}

// TestReusePortOwner: a second ReusePort worker on a port another one
// listens on fails in Run with an error that names the port and
// JoinReusePort (before, it joined the group and took half of the
// connections); with JoinReusePort set on both, both serve. A port whose
// listener has gone, leaving connections in TIME_WAIT, is free again.
func TestReusePortOwner(t *testing.T) {
	if !sock.ReusePortBalances {
		t.Skip("ReusePort falls back to shared accept here")
	}
	start := func(addr string, join bool) (*Worker, *running) {
		w := &Worker{Addr: addr, Count: 2, ReusePort: true, JoinReusePort: join, OnMessage: textEcho}
		return w, startWorker(t, w)
	}
	a, ra := start("text://127.0.0.1:0", false)
	_, port, _ := net.SplitHostPort(ra.addr)
	b := &Worker{Addr: "text://127.0.0.1:" + port, Count: 2, ReusePort: true, OnMessage: textEcho, Logger: quietLogger()}
	ctx, cancel := contextWithTimeout(3 * time.Second) // a Run that serves returns nil then
	err := b.Run(ctx)
	cancel()
	t.Logf("second instance: %v", err)
	if err == nil || !errors.Is(err, unix.EADDRINUSE) || !strings.Contains(err.Error(), "port "+port) || !strings.Contains(err.Error(), "JoinReusePort") {
		t.Fatalf("second instance on port %s: Run returned %v; want EADDRINUSE naming the port and JoinReusePort", port, err)
	}
	// Traffic for the first instance leaves TIME_WAIT behind on the port.
	for range 20 {
		c := ra.dial(t)
		echoLine(t, c, bufio.NewReader(c), "a")
		c.Close()
	}
	ra.cancel()
	ra.wait(t)
	if n := a.Stats().Total().Accepted; n != 20 {
		t.Fatalf("the first instance accepted %d, want 20", n)
	}

	// On purpose: both set JoinReusePort, and both serve.
	x, rx := start("text://127.0.0.1:"+port, true)
	y, _ := start("text://127.0.0.1:"+port, true)
	const conns = 400
	for i := range conns {
		c := rx.dial(t)
		echoLine(t, c, bufio.NewReader(c), fmt.Sprint(i))
		c.Close()
	}
	nx, ny := x.Stats().Total().Accepted, y.Stats().Total().Accepted
	t.Logf("two instances with JoinReusePort: %d and %d of %d connections", nx, ny, conns)
	if nx+ny != conns || nx < conns/4 || ny < conns/4 {
		t.Errorf("accepted %d and %d of %d: want both to serve about half", nx, ny, conns)
	}
}

// TestUnixRemoteAddr: a unix client's address reads as Go's net package
// shows it, whether the client bound a path, an abstract name, or nothing
// ("@"). The Conn keeps a name only for the named ones, off its idle
// footprint.
func TestUnixRemoteAddr(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	remote := make(chan string, 1)
	w := &Worker{Addr: "unix://" + filepath.Join(dir, "s.sock"), Protocol: protocol.Text{}, Count: 1,
		OnConnect: func(c *Conn) { remote <- c.RemoteAddr().String() }, OnMessage: textEcho}
	r := startWorker(t, w)
	for _, local := range []string{filepath.Join(dir, "client.sock"), "@herd-test-" + strconv.Itoa(os.Getpid()), ""} {
		var laddr *net.UnixAddr
		if local != "" {
			laddr = &net.UnixAddr{Name: local, Net: "unix"}
		}
		c, err := net.DialUnix("unix", laddr, &net.UnixAddr{Name: r.addr, Net: "unix"})
		if err != nil {
			t.Fatal(err)
		}
		want := local
		if want == "" {
			want = "@"
		}
		if got := <-remote; got != want {
			t.Errorf("RemoteAddr = %q, want %q", got, want)
		}
		c.Close()
	}
}
