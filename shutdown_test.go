//go:build linux || darwin || freebsd

package herd

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/seed358e4494/herd/internal/loopback"
	"github.com/seed358e4494/herd/internal/sdtest"
	"github.com/seed358e4494/herd/internal/soak"
)

// conversation is a server that counts, per connection and on its loop,
// the messages OnMessage received, and answers each one.
type conversation struct {
	w         *Worker
	mu        sync.Mutex
	received  map[string]int // by remote address, filled in by OnClose
	stops     []atomic.Int32 // OnWorkerStop runs, per loop
	starts    atomic.Int32
	closes    atomic.Int32
	unmatched atomic.Int32 // OnClose without a counter
}

func newConversation(count int) *conversation {
	cv := &conversation{received: map[string]int{}, stops: make([]atomic.Int32, count)}
	cv.w = &Worker{
		Addr:          "text://127.0.0.1:0",
		Count:         count,
		OnWorkerStart: func(*Loop) { cv.starts.Add(1) },
		OnWorkerStop:  func(l *Loop) { cv.stops[l.Index()].Add(1) },
		OnConnect:     func(c *Conn) { c.SetContext(new(int)) },
		OnMessage: func(c *Conn, msg []byte) {
			*c.Context().(*int)++ // only this loop touches it
			c.Send(msg)
		},
		OnClose: func(c *Conn) {
			cv.closes.Add(1)
			n, ok := c.Context().(*int)
			if !ok {
				cv.unmatched.Add(1)
				return
			}
			cv.mu.Lock()
			cv.received[c.RemoteAddr().String()] = *n
			cv.mu.Unlock()
		},
	}
	return cv
}

// talker is one client of a conversation: it pipelines 3 messages, reads 3
// answers, and repeats until the server ends the stream.
type talker struct {
	local   string
	sent    int
	answers int
	err     error
}

func (tk *talker) run(c net.Conn, id int, rounds *atomic.Int32) {
	defer c.Close()
	tk.local = c.LocalAddr().String()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	br := bufio.NewReader(c)
	var batch []byte
	for round := 0; ; round++ {
		batch = batch[:0]
		for k := 0; k < 3; k++ {
			batch = fmt.Appendf(batch, "client %d message %d\n", id, tk.sent+k)
		}
		if _, err := c.Write(batch); err != nil {
			tk.err = fmt.Errorf("write: %w", err)
			return
		}
		tk.sent += 3
		for k := 0; k < 3; k++ {
			line, err := br.ReadString('\n')
			if err == io.EOF && line == "" {
				return // the server finished: read to EOF, close
			}
			if err != nil {
				tk.err = fmt.Errorf("read after %d answers: %w", tk.answers, err)
				return
			}
			if want := fmt.Sprintf("client %d message %d\n", id, tk.answers); line != want {
				tk.err = fmt.Errorf("answer %d: got %q, want %q", tk.answers, line, want)
				return
			}
			tk.answers++
		}
		if round == 1 {
			rounds.Add(1)
		}
	}
}

// runConversation starts n talkers, waits until each has finished two
// rounds, stops the server with stop while they keep talking, and checks
// that every message the server received was answered and nothing else.
func runConversation(t *testing.T, n, loops int, stop func(cv *conversation, r *running)) {
	cv := newConversation(loops)
	r := startWorker(t, cv.w)
	var rounds atomic.Int32
	talkers := make([]talker, n)
	var wg sync.WaitGroup
	for i := range talkers {
		c, err := net.DialTimeout("tcp", r.addr, 5*time.Second)
		if err != nil {
			t.Fatalf("dial %d: %v", i, err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			talkers[i].run(c, i, &rounds)
		}()
	}
	waitFor(t, 30*time.Second, "every client to finish two rounds", func() bool { return int(rounds.Load()) == n })
	stop(cv, r)
	if err := r.wait(t); err != nil {
		t.Errorf("Run: %v", err)
	}
	clientsDone := make(chan struct{})
	go func() { wg.Wait(); close(clientsDone) }()
	select {
	case <-clientsDone:
	case <-time.After(30 * time.Second):
		t.Fatal("clients did not see the end of the stream")
	}

	for i, n := range loopsStops(cv) {
		if n != 1 {
			t.Errorf("OnWorkerStop ran %d times on loop %d, want 1", n, i)
		}
	}
	if c := cv.closes.Load(); c != int32(n) || cv.unmatched.Load() != 0 {
		t.Errorf("OnClose ran %d times (%d without context), want %d", c, cv.unmatched.Load(), n)
	}
	cv.mu.Lock()
	defer cv.mu.Unlock()
	var sent, answered, unanswered int
	bad := 0
	for i := range talkers {
		tk := &talkers[i]
		sent += tk.sent
		answered += tk.answers
		if tk.err != nil {
			if bad++; bad <= 5 {
				t.Errorf("client %d: %v", i, tk.err)
			}
			continue
		}
		got, ok := cv.received[tk.local]
		if !ok {
			if bad++; bad <= 5 {
				t.Errorf("client %d (%s): the server has no record of it", i, tk.local)
			}
			continue
		}
		if got != tk.answers {
			if bad++; bad <= 5 {
				t.Errorf("client %d: the server received %d messages, the client got %d answers", i, got, tk.answers)
			}
		}
		if tk.answers < 6 {
			if bad++; bad <= 5 {
				t.Errorf("client %d: only %d answers before the stop", i, tk.answers)
			}
		}
		unanswered += tk.sent - tk.answers
	}
	if bad > 5 {
		t.Errorf("... %d clients failed in all", bad)
	}
	if s := sumStats(cv.w); s.dropped != 0 {
		t.Errorf("Stats Dropped = %d", s.dropped)
	}
	t.Logf("%d clients sent %d messages; %d answered, %d not received by the server", n, sent, answered, unanswered)
}

func loopsStops(cv *conversation) []int32 {
	out := make([]int32, len(cv.stops))
	for i := range cv.stops {
		out[i] = cv.stops[i].Load()
	}
	return out
}

func TestShutdownMidConversation(t *testing.T) {
	t.Parallel()
	n := 200
	if !soak.Enabled() {
		n = 50
	}
	runConversation(t, n, 2, func(cv *conversation, r *running) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := cv.w.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		// Shutdown returns once Run has stopped everything.
		cv.w.mu.Lock()
		st := cv.w.state
		cv.w.mu.Unlock()
		if st != stateClosed {
			t.Errorf("Shutdown returned with the worker in state %d", st)
		}
	})
}

func TestRunContextCancelGraceful(t *testing.T) {
	t.Parallel()
	runConversation(t, 20, 2, func(cv *conversation, r *running) {
		r.cancel()
	})
}

func TestRunAll(t *testing.T) {
	t.Parallel()
	cv1, cv2 := newConversation(2), newConversation(1)
	cv2.w.Addr = "frame://127.0.0.1:0"
	for _, w := range []*Worker{cv1.w, cv2.w} {
		w.Logger = quietLogger()
		if err := w.Listen(); err != nil {
			t.Fatal(err)
		}
	}
	a1, a2 := cv1.w.ListenAddr().String(), cv2.w.ListenAddr().String()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- RunAll(ctx, cv1.w, cv2.w) }()

	c1, err := net.DialTimeout("tcp", a1, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c1.Close()
	c1.SetDeadline(time.Now().Add(20 * time.Second))
	br1 := bufio.NewReader(c1)
	echoLine(t, c1, br1, "worker one")
	c2, err := net.DialTimeout("tcp", a2, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	c2.SetDeadline(time.Now().Add(20 * time.Second))
	br2 := bufio.NewReader(c2)
	frameEcho(t, c2, br2, []byte("worker two"))

	cancel()
	// Both connections are ended gracefully: the clients read to EOF.
	for i, br := range []*bufio.Reader{br1, br2} {
		if rest, err := io.ReadAll(br); err != nil || len(rest) > 0 {
			t.Errorf("client %d: %q, %v; want EOF", i+1, rest, err)
		}
	}
	c1.Close()
	c2.Close()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("RunAll: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("RunAll did not return after its context ended")
	}
	for i, cv := range []*conversation{cv1, cv2} {
		for l, n := range loopsStops(cv) {
			if n != 1 {
				t.Errorf("worker %d loop %d: OnWorkerStop ran %d times", i+1, l, n)
			}
		}
		if err := cv.w.Run(context.Background()); !errors.Is(err, ErrWorkerClosed) {
			t.Errorf("worker %d: Run after RunAll: %v, want ErrWorkerClosed", i+1, err)
		}
		if cv.closes.Load() != 1 {
			t.Errorf("worker %d: %d closes, want 1", i+1, cv.closes.Load())
		}
	}
	for _, a := range []string{a1, a2} {
		if c, err := net.DialTimeout("tcp", a, time.Second); err == nil {
			c.Close()
			t.Errorf("%s still accepts after RunAll returned", a)
		}
	}
}

func TestRunAllListenError(t *testing.T) {
	t.Parallel()
	good := &Worker{Addr: "text://127.0.0.1:0", Count: 1, Logger: quietLogger()}
	bad := &Worker{Addr: "bogus://127.0.0.1:0", Count: 1, Logger: quietLogger()}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := RunAll(ctx, good, bad)
	if err == nil || ctx.Err() != nil {
		t.Fatalf("RunAll with a bad address: %v (ctx %v), want an error at once", err, ctx.Err())
	}
	if err := good.Run(ctx); !errors.Is(err, ErrWorkerClosed) {
		t.Errorf("the good worker after RunAll failed: Run = %v, want ErrWorkerClosed", err)
	}
}

// A reply computed on another goroutine under Conn.Hold still reaches the
// client when a graceful stop begins meanwhile; without Hold it would be
// dropped.
func TestShutdownWaitsForHold(t *testing.T) {
	t.Parallel()
	received := make(chan struct{})
	release := make(chan struct{})
	w := &Worker{
		Addr:  "text://127.0.0.1:0",
		Count: 2,
		OnMessage: func(c *Conn, msg []byte) {
			hold := c.Hold()
			reply := "late " + string(msg)
			go func() {
				defer hold.Release()
				<-release
				if r := c.Send([]byte(reply)); r == Dropped {
					t.Errorf("Send under Hold during the stop: %v", r)
				}
			}()
			close(received)
		},
	}
	r := startWorker(t, w)
	cl := r.dial(t)
	cl.SetDeadline(time.Now().Add(15 * time.Second))
	if _, err := cl.Write([]byte("question\n")); err != nil {
		t.Fatal(err)
	}
	<-received
	sctx, cancel := contextWithTimeout(10 * time.Second)
	defer cancel()
	stopped := make(chan error, 1)
	go func() { stopped <- w.Shutdown(sctx) }()
	// The stop must be waiting for the Release, not finished.
	select {
	case err := <-stopped:
		t.Fatalf("Shutdown returned (%v) while a Hold was outstanding", err)
	case <-time.After(100 * time.Millisecond):
	}
	close(release)
	line, err := bufio.NewReader(cl).ReadString('\n')
	if err != nil || line != "late question\n" {
		t.Fatalf("reply: %q, %v", line, err)
	}
	cl.Close()
	if err := <-stopped; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
}

// TestShutdownTimeoutResetsHeld: a held connection whose reply has not
// come when the stop's context ends is reset, since its stream is cut; an
// idle one closed by the same stop ends cleanly.
func TestShutdownTimeoutResetsHeld(t *testing.T) {
	t.Parallel()
	received := make(chan struct{})
	w := &Worker{
		Addr:      "text://127.0.0.1:0",
		Count:     1,
		OnMessage: func(c *Conn, msg []byte) { c.Hold(); close(received) }, // never Released
	}
	r := startWorker(t, w)
	idle := r.dial(t)
	held := r.dial(t)
	if _, err := held.Write([]byte("question\n")); err != nil {
		t.Fatal(err)
	}
	<-received
	sctx, cancel := contextWithTimeout(300 * time.Millisecond)
	defer cancel()
	if err := w.Shutdown(sctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown: %v, want the context's deadline", err)
	}
	held.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := held.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("held connection: read %d bytes, %v; want a reset", n, err)
	}
	idle.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := idle.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("idle connection: read %d bytes, %v; want the end of stream", n, err)
	}
}

// TestShutdownHeldConnect: a graceful stop ends a connect under way at
// once (OnError, ErrWorkerClosed), unless it is held; a held one goes on, and once connected it runs
// OnConnect and stops as any connection does (here: closed once what
// OnConnect wrote is out).
func TestShutdownHeldConnect(t *testing.T) {
	t.Parallel()
	w, l := dialWorker(t)
	addr, open := loopback.LateAddr(t)
	unheld := make(chan error, 1)
	var connectedUnheld atomic.Bool
	onLoop(t, l, func() {
		l.Dial(context.Background(), addr, &Dialer{
			OnConnect: func(*Conn) { connectedUnheld.Store(true) },
			OnError:   func(_ *Conn, err error) { unheld <- err },
		})
		var hold *Hold
		c, _ := l.Dial(context.Background(), addr, &Dialer{
			OnConnect: func(c *Conn) {
				hold.Release()
				c.Write([]byte("made it"))
			},
		})
		hold = c.Hold()
	})
	sctx, cancel := contextWithTimeout(15 * time.Second)
	defer cancel()
	stopped := make(chan error, 1)
	go func() { stopped <- w.Shutdown(sctx) }()
	select {
	case err := <-unheld:
		if !errors.Is(err, ErrWorkerClosed) {
			t.Fatalf("the connect that was not held failed with %v, want ErrWorkerClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the stop did not close the connect that was not held")
	}
	if connectedUnheld.Load() {
		t.Fatal("the connect that was not held connected")
	}
	select {
	case err := <-stopped:
		t.Fatalf("Shutdown returned (%v) with a held connect under way", err)
	case <-time.After(100 * time.Millisecond):
	}
	ln := open()
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.SetDeadline(time.Now().Add(10 * time.Second))
	got, err := io.ReadAll(s)
	if err != nil || string(got) != "made it" {
		t.Fatalf("the held connection delivered %q, %v; want \"made it\" and its end", got, err)
	}
	s.Close()
	if err := <-stopped; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
}

// Regression: a second Shutdown on a worker that never ran closed a nil
// channel and panicked.
func TestShutdownTwiceNeverRan(t *testing.T) {
	t.Parallel()
	shutdownTwice := func(t *testing.T, w *Worker) {
		t.Helper()
		for i := 1; i <= 2; i++ {
			err, panicked := func() (err error, p any) {
				defer func() { p = recover() }()
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				return w.Shutdown(ctx), nil
			}()
			if panicked != nil {
				t.Fatalf("Shutdown %d panicked: %v", i, panicked)
			}
			if err != nil {
				t.Errorf("Shutdown %d: %v", i, err)
			}
		}
	}
	t.Run("new", func(t *testing.T) {
		shutdownTwice(t, &Worker{Addr: "tcp://127.0.0.1:0", Logger: quietLogger()})
	})
	t.Run("listened", func(t *testing.T) {
		w := &Worker{Addr: "tcp://127.0.0.1:0", Count: 1, Logger: quietLogger()}
		if err := w.Listen(); err != nil {
			t.Fatal(err)
		}
		shutdownTwice(t, w)
	})
	for _, addr := range []string{"sctp://127.0.0.1:0", "tcp://127.0.0.1:notaport"} {
		t.Run("run failed "+addr, func(t *testing.T) {
			w := &Worker{Addr: addr, Count: 1, Logger: quietLogger()}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := w.Run(ctx); err == nil {
				t.Fatalf("Run(%q) succeeded", addr)
			}
			shutdownTwice(t, w)
			if err := w.Run(ctx); !errors.Is(err, ErrWorkerClosed) {
				t.Errorf("Run after Shutdown: got %v, want ErrWorkerClosed", err)
			}
		})
	}
}

// Regression: during a graceful stop the listening socket stayed open until
// Run returned. The kernel kept completing handshakes that no loop would
// ever accept: a client connected and then hung. The listener now closes as
// soon as draining starts, so new connections are refused.
func TestDrainRefusesNewConns(t *testing.T) {
	t.Parallel()
	for _, m := range listenModes {
		t.Run(m.name, func(t *testing.T) {
			t.Parallel()
			w := &Worker{
				Addr:        "text://127.0.0.1:0",
				Count:       2,
				Accept:      m.accept,
				ReusePort:   m.reusePort,
				StopTimeout: 10 * time.Second, // the held connection outlives the test's checks
				OnMessage:   textEcho,
			}
			r := startWorker(t, w)
			held := r.dial(t)
			hbr := bufio.NewReader(held)
			echoLine(t, held, hbr, "hold the drain open")

			ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			defer cancel()
			shut := make(chan error, 1)
			go func() { shut <- w.Shutdown(ctx) }()

			// Wait (bounded) until the listener is gone.
			deadline := time.Now().Add(3 * time.Second)
			var err error
			for {
				var c net.Conn
				c, err = net.DialTimeout("tcp", r.addr, time.Second)
				if err == nil {
					c.Close()
				} else if errors.Is(err, syscall.ECONNREFUSED) {
					break
				}
				// Else a handshake caught by the listener's closing
				// (reset): try again.
				if time.Now().After(deadline) {
					break
				}
				time.Sleep(5 * time.Millisecond)
			}
			if err == nil {
				t.Errorf("%s: connections to %s are still accepted by the kernel 3s into a graceful stop", m.name, r.addr)
			} else if !errors.Is(err, syscall.ECONNREFUSED) {
				t.Errorf("%s: dial during the drain: %v, want connection refused", m.name, err)
			}
			if c, err := net.DialTimeout("tcp", r.addr, time.Second); err == nil {
				c.Close()
				t.Errorf("%s: a new connection during the drain was accepted", m.name)
			} else if !errors.Is(err, syscall.ECONNREFUSED) {
				t.Errorf("%s: dial during the drain: %v, want connection refused", m.name, err)
			}
			select {
			case err := <-shut:
				t.Fatalf("Shutdown returned (%v) while a connection held the drain", err)
			default:
			}

			// The held connection is answered with the end of the stream;
			// closing our side ends the drain.
			held.SetReadDeadline(time.Now().Add(10 * time.Second))
			if b, err := hbr.ReadByte(); err != io.EOF {
				t.Errorf("held connection: got %q, %v; want EOF", b, err)
			}
			held.Close()
			select {
			case err := <-shut:
				if err != nil {
					t.Errorf("Shutdown: %v", err)
				}
			case <-time.After(15 * time.Second):
				t.Fatal("Shutdown did not return after the held connection closed")
			}
			if err := r.wait(t); err != nil {
				t.Errorf("Run: %v", err)
			}
		})
	}
}

// Under systemd's Type=notify, RunAll reports READY=1 once the workers are
// bound, and STOPPING=1 when the graceful stop begins, as datagrams on
// NOTIFY_SOCKET.
func TestRunAllNotifiesServiceManager(t *testing.T) {
	next := sdtest.NotifySocket(t)
	w := &Worker{Addr: "text://127.0.0.1:0", Count: 1, Logger: quietLogger(), OnMessage: textEcho}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- RunAll(ctx, w) }()
	if got := next(10 * time.Second); got != "READY=1" {
		t.Fatalf("first notification %q, want READY=1", got)
	}
	c, err := net.DialTimeout("tcp", w.ListenAddr().String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	echoLine(t, c, bufio.NewReader(c), "served once ready")
	c.Close()
	cancel()
	if got := next(10 * time.Second); got != "STOPPING=1" {
		t.Fatalf("notification on stop %q, want STOPPING=1", got)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestStopEndsEveryConnect: each connect a stop ends reports
// OnError(ErrWorkerClosed), held or not, even one a callback starts, held,
// while the stop is being forced (each OnError here dials the next): a
// held connect could start on a loop forced to stop, which never served
// it, its descriptor and count left behind.
func TestStopEndsEveryConnect(t *testing.T) {
	t.Parallel()
	w, l := dialWorker(t)
	addr := silentAddr(t)
	const chain = 4
	var made, reported atomic.Int32
	errs := make(chan error, chain)
	var d *Dialer
	dial := func() {
		c, err := l.Dial(context.Background(), addr, d)
		if err != nil {
			errs <- err
			return
		}
		made.Add(1)
		c.Hold()
	}
	d = &Dialer{Timeout: time.Minute, OnError: func(_ *Conn, err error) {
		reported.Add(1)
		errs <- err
		if made.Load() < chain {
			dial()
		}
	}}
	onLoop(t, l, dial)
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // a stop forced at once
	w.Shutdown(ctx)
	for i := 0; i < chain; i++ {
		select {
		case err := <-errs:
			if !errors.Is(err, ErrWorkerClosed) {
				t.Fatalf("connect %d ended with %v, want ErrWorkerClosed", i+1, err)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("%d connects made, %d reported ended", made.Load(), reported.Load())
		}
	}
	if a := w.Stats().Total().Active; a != 0 {
		t.Fatalf("active %d after the stop", a)
	}
}

// TestStopBoundsRedials: a Dialer whose OnError dials again, held, each
// time the stop ends a connect does not hold the stopped loop: the loop
// ends what callbacks post in a bounded number of rounds, and Shutdown
// returns.
func TestStopBoundsRedials(t *testing.T) {
	t.Parallel()
	w, l := dialWorker(t)
	addr := silentAddr(t)
	var ended atomic.Int32
	var d *Dialer
	dial := func() {
		if c, err := l.Dial(context.Background(), addr, d); err == nil {
			c.Hold()
		}
	}
	d = &Dialer{Timeout: time.Minute, OnError: func(*Conn, error) { ended.Add(1); dial() }}
	onLoop(t, l, dial)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	stopped := make(chan struct{})
	go func() { w.Shutdown(ctx); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(10 * time.Second):
		t.Fatalf("Shutdown still running after %d connects ended", ended.Load())
	}
	if ended.Load() == 0 {
		t.Fatal("no connect ended")
	}
}
