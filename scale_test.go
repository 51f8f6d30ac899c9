//go:build linux

package herd

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// migrateReq is the kernel's net.ipv4.tcp_migrate_req ("" where it has
// none): at 1, closing a listener of a SO_REUSEPORT group hands its queued
// connections to another member instead of resetting them.
func migrateReq() string {
	b, _ := os.ReadFile("/proc/sys/net/ipv4/tcp_migrate_req")
	return strings.TrimSpace(string(b))
}

// churn is the traffic Scale must not disturb: short connections (dial,
// one line echoed, close) and keep-alive connections exchanging lines. It
// counts every failure: a failed dial, a reset, an error, a line lost or
// out of place.
type churn struct {
	addr     string
	stop     atomic.Bool
	wg       sync.WaitGroup
	short    atomic.Int64 // short connections completed
	messages atomic.Int64 // keep-alive lines echoed
	mu       sync.Mutex
	failures []error
}

func (ch *churn) fail(err error) {
	ch.mu.Lock()
	defer ch.mu.Unlock()
	if len(ch.failures) < 20 {
		ch.failures = append(ch.failures, err)
	} else {
		ch.failures[19] = fmt.Errorf("and more; last: %w", err)
	}
}

func startChurn(addr string, short, keepAlive int) *churn {
	ch := &churn{addr: addr}
	for i := range short {
		ch.wg.Add(1)
		go func() {
			defer ch.wg.Done()
			for n := 0; !ch.stop.Load(); n++ {
				if err := ch.shortConn(fmt.Sprintf("s%d-%d", i, n)); err != nil {
					ch.fail(err)
					return
				}
				ch.short.Add(1)
			}
		}()
	}
	for i := range keepAlive {
		ch.wg.Add(1)
		go func() {
			defer ch.wg.Done()
			if err := ch.keepAlive(fmt.Sprintf("k%d", i)); err != nil {
				ch.fail(err)
			}
		}()
	}
	return ch
}

func (ch *churn) shortConn(line string) error {
	c, err := net.DialTimeout("tcp", ch.addr, 5*time.Second)
	if err != nil {
		return fmt.Errorf("dial: %w", err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write([]byte(line + "\n")); err != nil {
		return fmt.Errorf("short %s: write: %w", line, err)
	}
	got, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || got != line+"\n" {
		return fmt.Errorf("short %s: got %q, %v", line, got, err)
	}
	return nil
}

func (ch *churn) keepAlive(name string) error {
	c, err := net.DialTimeout("tcp", ch.addr, 5*time.Second)
	if err != nil {
		return fmt.Errorf("keep-alive %s: dial: %w", name, err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	for n := 0; !ch.stop.Load(); n++ {
		line := fmt.Sprintf("%s-%d\n", name, n)
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Write([]byte(line)); err != nil {
			return fmt.Errorf("keep-alive %s: write: %w", line, err)
		}
		got, err := br.ReadString('\n')
		if err != nil || got != line {
			return fmt.Errorf("keep-alive %s: got %q, %v", strings.TrimSpace(line), got, err)
		}
		ch.messages.Add(1)
		time.Sleep(time.Millisecond)
	}
	return nil
}

// end stops the clients and returns what failed.
func (ch *churn) end() []error {
	ch.stop.Store(true)
	ch.wg.Wait()
	return ch.failures
}

// TestScaleUnderChurn changes the number of loops while clients churn short
// connections and keep-alive clients exchange lines, in every listen mode:
// not one connection may fail, no line may be lost. Leaving loops hand
// their listeners and connections to the loops that stay.
func TestScaleUnderChurn(t *testing.T) {
	t.Logf("net.ipv4.tcp_migrate_req = %q", migrateReq())
	if want := os.Getenv("HERD_WANT_MIGRATE_REQ"); want != "" && migrateReq() != want {
		t.Fatalf("tcp_migrate_req is %q, the namespace was to set %q", migrateReq(), want)
	}
	steps := map[string][]int{"4-1-4": {4, 1, 4}, "2-8-2": {2, 8, 2}}
	for _, m := range listenModes {
		for name, counts := range steps {
			if testing.Short() && (name != "4-1-4" || m.name != "reuseport") {
				continue
			}
			t.Run(m.name+"/"+name, func(t *testing.T) {
				var starts, stops atomic.Int32
				w := &Worker{Addr: "text://127.0.0.1:0", Count: counts[0], ReusePort: m.reusePort, Accept: m.accept,
					OnMessage:     textEcho,
					OnWorkerStart: func(*Loop) { starts.Add(1) },
					OnWorkerStop:  func(*Loop) { stops.Add(1) },
				}
				r := startWorker(t, w)
				ch := startChurn(r.addr, 200, 100)
				defer ch.end()
				waitFor(t, 5*time.Second, "keep-alive traffic", func() bool { return ch.messages.Load() > 500 })
				for _, n := range counts[1:] {
					before := ch.messages.Load()
					ctx, cancel := contextWithTimeout(10 * time.Second)
					err := w.Scale(ctx, n)
					cancel()
					if err != nil {
						t.Fatalf("Scale(%d): %v", n, err)
					}
					s := w.Stats()
					if len(s.Loops) != n {
						t.Fatalf("after Scale(%d): %d loops in Stats", n, len(s.Loops))
					}
					for i, l := range s.Loops {
						if l.Index != i {
							t.Fatalf("after Scale(%d): loop %d has Index %d", n, i, l.Index)
						}
					}
					// The traffic goes on, on the loops there are now.
					waitFor(t, 5*time.Second, "traffic after Scale", func() bool { return ch.messages.Load() > before+500 })
				}
				failures := ch.end()
				for _, err := range failures {
					t.Error(err)
				}
				s := w.Stats()
				t.Logf("short connections %d, keep-alive lines %d, loops +%d -%d", ch.short.Load(), ch.messages.Load(), s.LoopsAdded, s.LoopsRemoved)
				if got, want := int(starts.Load()), counts[0]+int(s.LoopsAdded); got != want {
					t.Errorf("OnWorkerStart ran %d times, want %d", got, want)
				}
				if got := stops.Load(); got != int32(s.LoopsRemoved) {
					t.Errorf("OnWorkerStop ran %d times while serving, want %d (one per loop that left)", got, s.LoopsRemoved)
				}
			})
		}
	}
}

// TestScaleUnderChurnMigrateReq runs TestScaleUnderChurn again in a network
// namespace of its own where net.ipv4.tcp_migrate_req is 1.
func TestScaleUnderChurnMigrateReq(t *testing.T) {
	if os.Getenv("HERD_WANT_MIGRATE_REQ") != "" {
		t.Skip("already inside the namespace")
	}
	netnsRun(t, "^TestScaleUnderChurn$")
}

// netnsRun runs this test binary's tests matching run in a new network
// namespace (loopback up, tcp_migrate_req=1), or skips saying why it
// cannot.
func netnsRun(t *testing.T, run string) {
	if testing.Short() {
		t.Skip("short mode")
	}
	execSelf(t)
	if _, err := exec.LookPath("unshare"); err != nil {
		t.Skip("no unshare(1): cannot make a network namespace")
	}
	script := `ip link set lo up && echo 1 > /proc/sys/net/ipv4/tcp_migrate_req && exec "$0" "$@"`
	if err := exec.Command("unshare", "-n", "true").Run(); err != nil {
		t.Skipf("cannot make a network namespace here (unshare -n: %v): needs root or user namespaces", err)
	}
	cmd := exec.Command("unshare", "-n", "sh", "-c", script, os.Args[0], "-test.run="+run, "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), "HERD_WANT_MIGRATE_REQ=1")
	out, err := cmd.CombinedOutput()
	for _, line := range strings.Split(string(out), "\n") {
		if strings.Contains(line, "---") || strings.Contains(line, "_test.go") {
			t.Log(line)
		}
	}
	if err != nil {
		t.Fatalf("in the namespace: %v\n%s", err, out)
	}
}

// TestScaleKeepsAcceptQueue takes a ReusePort loop away while connections
// wait in its listener's accept queue (the loop is kept busy so that it
// accepts none): they are served by the loop that stays. Closing that
// listener instead, as a naive design would, resets them unless
// tcp_migrate_req is 1; the test shows that too, with plain sockets.
func TestScaleKeepsAcceptQueue(t *testing.T) {
	const clients = 200
	t.Logf("net.ipv4.tcp_migrate_req = %q", migrateReq())

	t.Run("herd", func(t *testing.T) {
		w := &Worker{Addr: "text://127.0.0.1:0", Count: 2, ReusePort: true, OnMessage: textEcho}
		r := startWorker(t, w)
		var loops []*Loop
		waitFor(t, 5*time.Second, "loops", func() bool { loops = w.Loops(); return loops != nil })
		release, blocked := make(chan struct{}), make(chan struct{})
		loops[1].Post(func() { close(blocked); <-release }) // loop 1 accepts nothing until released
		<-blocked
		conns := make([]net.Conn, clients)
		for i := range conns {
			c, err := net.DialTimeout("tcp", r.addr, 5*time.Second)
			if err != nil {
				t.Fatalf("dial %d: %v", i, err)
			}
			defer c.Close()
			conns[i] = c
		}
		done := make(chan error, 1)
		go func() { done <- w.Scale(context.Background(), 1) }()
		time.Sleep(50 * time.Millisecond)
		close(release) // loop 1 now runs its leave: it has accepted nothing
		if err := <-done; err != nil {
			t.Fatalf("Scale(1): %v", err)
		}
		failed := 0
		for i, c := range conns {
			br := bufio.NewReader(c)
			line := fmt.Sprintf("c%d\n", i)
			c.SetDeadline(time.Now().Add(5 * time.Second))
			c.Write([]byte(line))
			if got, err := br.ReadString('\n'); err != nil || got != line {
				failed++
				if failed < 5 {
					t.Errorf("connection %d: got %q, %v", i, got, err)
				}
			}
		}
		s := w.Stats()
		t.Logf("%d connections dialled while loop 1 was blocked, %d failed; loop 0 accepted %d", clients, failed, s.Loops[0].Accepted)
		// Loop 1 may accept one batch when released, before its leave
		// runs (those connections move too); the rest of its queue is
		// accepted by loop 0.
		if s.Loops[0].Accepted < clients-maxAcceptBatch {
			t.Errorf("loop 0 accepted %d of %d: the queue of loop 1 did not move to it", s.Loops[0].Accepted, clients)
		}
	})

	t.Run("naive close", func(t *testing.T) {
		resets := naiveReusePortClose(t, clients)
		t.Logf("naive close of one of 2 listeners with %d queued connections: %d reset (tcp_migrate_req %s)", clients, resets, migrateReq())
		switch migrateReq() {
		case "0":
			if resets == 0 {
				t.Errorf("no connection was reset: the contrast shows nothing")
			}
		case "1":
			if resets != 0 {
				t.Errorf("%d resets with tcp_migrate_req=1", resets)
			}
		}
	})
}

// TestScaleKeepsAcceptQueueMigrateReq runs TestScaleKeepsAcceptQueue in a
// network namespace where tcp_migrate_req is 1.
func TestScaleKeepsAcceptQueueMigrateReq(t *testing.T) {
	if os.Getenv("HERD_WANT_MIGRATE_REQ") != "" {
		t.Skip("already inside the namespace")
	}
	netnsRun(t, "^TestScaleKeepsAcceptQueue$")
}

// naiveReusePortClose makes a SO_REUSEPORT group of two listeners, queues
// n connections on it without accepting, closes one listener, and counts
// the clients whose connection was reset.
func naiveReusePortClose(t *testing.T, n int) int {
	ep, err := parseAddr("tcp://127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a, err := listen(ep, true)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(a)
	ep.sa, _ = boundSockaddr(a)
	b, err := listen(ep, true)
	if err != nil {
		t.Fatal(err)
	}
	addr := sockaddrString(ep.sa)
	conns := make([]net.Conn, n)
	for i := range conns {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatalf("dial %d: %v", i, err)
		}
		defer c.Close()
		conns[i] = c
	}
	unix.Close(b)
	// Accept what is left in the other listener, and echo nothing: a
	// connection reset by the close reads ECONNRESET, one still queued
	// times out.
	var resets atomic.Int32
	var wg sync.WaitGroup
	deadline := time.Now().Add(300 * time.Millisecond)
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.SetReadDeadline(deadline)
			if _, err := c.Read(make([]byte, 1)); errors.Is(err, unix.ECONNRESET) {
				resets.Add(1)
			}
		}()
	}
	wg.Wait()
	return int(resets.Load())
}

// TestScaleErrors: a count below one, and Scale on a worker not running.
func TestScaleErrors(t *testing.T) {
	w := &Worker{Addr: "tcp://127.0.0.1:0", Count: 2}
	if err := w.Scale(context.Background(), 3); !errors.Is(err, ErrWorkerClosed) {
		t.Errorf("Scale before Run: %v, want ErrWorkerClosed", err)
	}
	r := startWorker(t, w)
	waitFor(t, 5*time.Second, "loops", func() bool { return w.Loops() != nil })
	for _, n := range []int{0, -1} {
		if err := w.Scale(context.Background(), n); !errors.Is(err, ErrBadCount) {
			t.Errorf("Scale(%d): %v, want ErrBadCount", n, err)
		}
	}
	if n := len(w.Stats().Loops); n != 2 {
		t.Errorf("a refused Scale changed the loops: %d", n)
	}
	// Concurrent calls serialize: the last one to run wins, and every one
	// succeeds.
	var wg sync.WaitGroup
	for _, n := range []int{1, 3, 2, 4} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := w.Scale(context.Background(), n); err != nil {
				t.Errorf("Scale(%d): %v", n, err)
			}
		}()
	}
	wg.Wait()
	if n := len(w.Stats().Loops); n < 1 || n > 4 {
		t.Errorf("after concurrent Scales: %d loops", n)
	}
	r.cancel()
	r.wait(t)
	if err := w.Scale(context.Background(), 2); !errors.Is(err, ErrWorkerClosed) {
		t.Errorf("Scale after Run returned: %v, want ErrWorkerClosed", err)
	}
}

// TestScaleDuringShutdown: a Scale that meets a stopping worker fails with
// ErrWorkerClosed or completes; Run returns either way, and nothing leaks.
func TestScaleDuringShutdown(t *testing.T) {
	w := &Worker{Addr: "text://127.0.0.1:0", Count: 4, ReusePort: true, OnMessage: textEcho}
	r := startWorker(t, w)
	ch := startChurn(r.addr, 20, 20)
	waitFor(t, 5*time.Second, "traffic", func() bool { return ch.messages.Load() > 100 })
	errs := make(chan error, 2)
	go func() { errs <- w.Scale(context.Background(), 1) }()
	go func() {
		ctx, cancel := contextWithTimeout(5 * time.Second)
		defer cancel()
		errs <- w.Shutdown(ctx)
	}()
	for range 2 {
		if err := <-errs; err != nil && !errors.Is(err, ErrWorkerClosed) {
			t.Errorf("Scale or Shutdown: %v", err)
		}
	}
	ch.end() // the clients see the stop: their errors are expected here
	if err := r.wait(t); err != nil {
		t.Errorf("Run: %v", err)
	}
	if err := w.Scale(context.Background(), 2); !errors.Is(err, ErrWorkerClosed) {
		t.Errorf("Scale after Shutdown: %v, want ErrWorkerClosed", err)
	}
}

// TestPipeScale: Worker.Scale while short proxied connections churn and
// long ones exchange lines: nothing fails, and every pipe that ended
// ended clean.
func TestPipeScale(t *testing.T) { bothWays(t, testPipeScale) }

func testPipeScale(t *testing.T, splice bool) {
	ln := lineEchoServer(t, "tcp", "127.0.0.1:0")
	p := startPipeProxy(t, ln.Addr().String(), 4, splice)
	ch := startChurn(p.addr, 50, 50)
	defer ch.end()
	waitFor(t, 5*time.Second, "traffic", func() bool { return ch.messages.Load() > 500 })
	for _, n := range []int{1, 3, 2} {
		before := ch.messages.Load()
		ctx, cancel := contextWithTimeout(10 * time.Second)
		err := p.w.Scale(ctx, n)
		cancel()
		if err != nil {
			t.Fatalf("Scale(%d): %v", n, err)
		}
		waitFor(t, 5*time.Second, "traffic after Scale", func() bool { return ch.messages.Load() > before+500 })
	}
	for _, err := range ch.end() {
		t.Error(err)
	}
	if f := p.failed.Load(); f != 0 {
		t.Errorf("%d dials failed", f)
	}
	for len(p.done) > 0 {
		if r := <-p.done; !r.clean {
			t.Errorf("a pipe ended unclean: %+v", r)
		}
	}
	t.Logf("short proxied connections %d, keep-alive lines %d", ch.short.Load(), ch.messages.Load())
}
