//go:build linux || darwin || freebsd

package herd

// The loop: timers, Post, and callbacks that panic.

import (
	"bufio"
	"errors"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// timerWorker starts a worker whose loops record the goroutine they run on.
func timerWorker(t *testing.T, count int) (*Worker, []*Loop, []uint64) {
	var started atomic.Int32
	ids := make([]uint64, count)
	var mu sync.Mutex
	w := &Worker{
		Addr:  "tcp://127.0.0.1:0",
		Count: count,
		OnWorkerStart: func(l *Loop) {
			mu.Lock()
			ids[l.Index()] = goid()
			mu.Unlock()
			started.Add(1)
		},
	}
	startWorker(t, w)
	loops := loopsOf(t, w, &started)
	mu.Lock()
	defer mu.Unlock()
	return w, loops, slices.Clone(ids)
}

func TestTimerAfterFuncRunsOnceOnLoop(t *testing.T) {
	t.Parallel()
	_, loops, ids := timerWorker(t, 2)
	if ids[0] == ids[1] || ids[0] == goid() {
		t.Fatalf("loop goroutines %v (test goroutine %d)", ids, goid())
	}
	for i, l := range loops {
		var runs atomic.Int32
		var ranOn atomic.Uint64
		fired := make(chan struct{}, 2)
		tm := l.AfterFunc(10*time.Millisecond, func() {
			runs.Add(1)
			ranOn.Store(goid())
			fired <- struct{}{}
		})
		select {
		case <-fired:
		case <-time.After(10 * time.Second):
			t.Fatalf("loop %d: AfterFunc did not fire", i)
		}
		if got := ranOn.Load(); got != ids[i] {
			t.Errorf("loop %d: AfterFunc ran on goroutine %d, want the loop's %d", i, got, ids[i])
		}
		time.Sleep(50 * time.Millisecond)
		onLoop(t, l, func() {})
		if n := runs.Load(); n != 1 {
			t.Errorf("loop %d: AfterFunc ran %d times", i, n)
		}
		if tm.Stop() {
			t.Errorf("loop %d: Stop after the timer fired reported it active", i)
		}
	}
}

func TestTimerEveryStops(t *testing.T) {
	t.Parallel()
	_, loops, ids := timerWorker(t, 1)
	l := loops[0]
	count := 0 // touched only on the loop
	wrongGoroutine := 0
	tm := l.Every(2*time.Millisecond, func() {
		count++
		if goid() != ids[0] {
			wrongGoroutine++
		}
	})
	read := func() (n int) {
		onLoop(t, l, func() { n = count })
		return n
	}
	waitFor(t, 10*time.Second, "5 runs of Every", func() bool { return read() >= 5 })
	if !tm.Stop() {
		t.Error("Stop reported the timer inactive")
	}
	if tm.Stop() {
		t.Error("second Stop reported the timer active")
	}
	stopped := read() // the removal posted by Stop has run
	time.Sleep(60 * time.Millisecond)
	if after := read(); after != stopped {
		t.Errorf("Every ran %d more times after Stop", after-stopped)
	}
	var wrong int
	onLoop(t, l, func() { wrong = wrongGoroutine })
	if wrong != 0 {
		t.Errorf("Every ran %d times off the loop goroutine", wrong)
	}

	// Stopped from its own callback after the third run.
	runs := 0
	done := make(chan struct{})
	var self *Timer
	var selfMu sync.Mutex
	selfMu.Lock()
	self = l.Every(time.Millisecond, func() {
		runs++
		if runs == 3 {
			selfMu.Lock()
			self.Stop()
			selfMu.Unlock()
			close(done)
		}
	})
	selfMu.Unlock()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("self-stopping timer did not reach 3 runs")
	}
	time.Sleep(30 * time.Millisecond)
	var n int
	onLoop(t, l, func() { n = runs })
	if n != 3 {
		t.Errorf("self-stopped timer ran %d times, want 3", n)
	}
}

func TestTimerStopBeforeFiring(t *testing.T) {
	t.Parallel()
	_, loops, _ := timerWorker(t, 1)
	l := loops[0]
	var fired atomic.Int32
	// Stopped before the loop even scheduled it.
	pending := time.Now()
	t1Stopped := true
	t1 := l.AfterFunc(20*time.Millisecond, func() { fired.Add(1) })
	if !t1.Stop() {
		if time.Since(pending) < 20*time.Millisecond {
			t.Error("Stop of a pending AfterFunc reported it inactive")
		}
		t1Stopped = false // it was due, and runs rightly
	}
	// Stopped once it sits in the loop's heap. A loaded run can take longer
	// than the delay to get here, when the timer has rightly fired: only a
	// Stop that comes before the deadline must report it active, so the
	// delay grows until one does.
	for delay := 40 * time.Millisecond; ; delay *= 4 {
		var ran atomic.Int32
		scheduled := time.Now()
		t2 := l.AfterFunc(delay, func() { ran.Add(1) })
		onLoop(t, l, func() {})
		stopped := t2.Stop()
		early := time.Since(scheduled) < delay
		if !stopped {
			if early {
				t.Fatalf("Stop %v before a %v AfterFunc was due reported it inactive", time.Since(scheduled), delay)
			}
			if delay > 5*time.Second {
				t.Fatal("Stop never came before the deadline")
			}
			continue
		}
		// A control timer that does fire, later than the stopped one.
		control := make(chan struct{})
		l.AfterFunc(2*delay, func() { close(control) })
		select {
		case <-control:
		case <-time.After(10*time.Second + 2*delay):
			t.Fatal("control timer did not fire")
		}
		onLoop(t, l, func() {})
		if n := ran.Load(); n != 0 {
			t.Errorf("an AfterFunc whose Stop reported it active ran %d times", n)
		}
		break
	}
	onLoop(t, l, func() {})
	if n := fired.Load(); t1Stopped && n != 0 {
		t.Errorf("an AfterFunc stopped while pending ran %d times", n)
	}
}

func TestLoopPost(t *testing.T) {
	t.Parallel()
	w, loops, ids := timerWorker(t, 2)
	for i, l := range loops {
		var order []int // appended on the loop only
		var ranOn atomic.Uint64
		for k := 0; k < 100; k++ {
			if !l.Post(func() { order = append(order, k); ranOn.Store(goid()) }) {
				t.Fatalf("Post on a running loop reported false")
			}
		}
		var got []int
		onLoop(t, l, func() { got = slices.Clone(order) })
		if len(got) != 100 {
			t.Fatalf("loop %d: %d of 100 posted functions ran", i, len(got))
		}
		for k, v := range got {
			if v != k {
				t.Fatalf("loop %d: posted functions ran out of order: %v", i, got)
			}
		}
		if ranOn.Load() != ids[i] {
			t.Errorf("loop %d: Post ran f on goroutine %d, want %d", i, ranOn.Load(), ids[i])
		}
	}
	sctx, cancel := contextWithTimeout(10 * time.Second)
	defer cancel()
	if err := w.Shutdown(sctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	ran := false
	if loops[0].Post(func() { ran = true }) {
		t.Error("Post on a stopped loop reported true")
	}
	time.Sleep(10 * time.Millisecond)
	if ran {
		t.Error("Post ran f on a stopped loop")
	}
}

func TestPanicInOnMessage(t *testing.T) {
	t.Parallel()
	logs := &syncBuffer{}
	var errs errorLog
	var closes atomic.Int32
	w := &Worker{
		Addr:   "text://127.0.0.1:0",
		Count:  1,
		Logger: slog.New(slog.NewTextHandler(logs, nil)),
		OnMessage: func(c *Conn, msg []byte) {
			if string(msg) == "boom" {
				panic("test panic: boom")
			}
			c.Send(msg)
		},
		OnError: errs.add,
		OnClose: func(*Conn) { closes.Add(1) },
	}
	r := startWorker(t, w)
	a, b := r.dial(t), r.dial(t)
	abr, bbr := bufio.NewReader(a), bufio.NewReader(b)
	echoLine(t, a, abr, "hi")
	echoLine(t, b, bbr, "hi")
	if _, err := io.WriteString(a, "boom\nnot answered\n"); err != nil {
		t.Fatal(err)
	}
	expectClosed(t, a, "connection whose OnMessage panicked")
	if err := errs.wait(t, 1); !errors.Is(err, ErrPanic) || !strings.Contains(err.Error(), "boom") {
		t.Errorf("OnError got %v, want ErrPanic with the panic value", err)
	}
	waitFor(t, 10*time.Second, "OnClose", func() bool { return closes.Load() == 1 })
	log := logs.String()
	if !strings.Contains(log, "panic") || !strings.Contains(log, "test panic: boom") {
		t.Errorf("the panic was not logged:\n%s", log)
	}
	echoLine(t, b, bbr, "still served")
	c := r.dial(t)
	echoLine(t, c, bufio.NewReader(c), "new connection")
	if s := sumStats(w); s.active != 2 {
		t.Errorf("active = %d, want 2", s.active)
	}
	if n := len(errs.list()); n != 1 {
		t.Errorf("OnError ran %d times: %v", n, errs.list())
	}
}

func TestPanicInOtherCallbacks(t *testing.T) {
	t.Parallel()
	logs := &syncBuffer{}
	var errs errorLog
	var connects atomic.Int32
	loops := make(chan *Loop, 1)
	w := &Worker{
		Addr:          "text://127.0.0.1:0",
		Count:         1,
		Logger:        slog.New(slog.NewTextHandler(logs, nil)),
		OnWorkerStart: func(l *Loop) { loops <- l },
		OnConnect: func(c *Conn) {
			if connects.Add(1) == 2 {
				panic("test panic in OnConnect")
			}
		},
		OnMessage: textEcho,
		OnError:   errs.add,
	}
	r := startWorker(t, w)
	l := <-loops
	a := r.dial(t)
	abr := bufio.NewReader(a)
	echoLine(t, a, abr, "first")
	b := r.dial(t)
	expectClosed(t, b, "connection whose OnConnect panicked")
	if err := errs.wait(t, 1); !errors.Is(err, ErrPanic) {
		t.Errorf("OnError got %v, want ErrPanic", err)
	}
	// A timer that panics is logged; the loop goes on.
	fired := make(chan struct{})
	l.AfterFunc(time.Millisecond, func() { close(fired); panic("test panic in a timer") })
	<-fired
	onLoop(t, l, func() {})
	echoLine(t, a, abr, "still served")
	waitFor(t, 10*time.Second, "both panics in the log", func() bool {
		log := logs.String()
		return strings.Contains(log, "test panic in OnConnect") && strings.Contains(log, "test panic in a timer")
	})
	if s := sumStats(w); s.active != 1 {
		t.Errorf("active = %d, want 1", s.active)
	}
}

// Busy counts the time a loop spends on its work, not the time it waits:
// a loop whose callbacks spin for half a second is busy for at least that
// long, an idle loop of the same worker for far less.
func TestLoopBusyTime(t *testing.T) {
	t.Parallel()
	w := &Worker{Addr: "text://127.0.0.1:0", Count: 2, Accept: AcceptRoundRobin}
	w.OnMessage = func(c *Conn, msg []byte) {
		for end := time.Now().Add(50 * time.Millisecond); time.Now().Before(end); {
		}
		c.Send(msg)
	}
	r := startWorker(t, w)
	c := r.dial(t)
	br := bufio.NewReader(c)
	for i := 0; i < 10; i++ {
		echoLine(t, c, br, "spin")
	}
	time.Sleep(200 * time.Millisecond) // both loops idle a while
	st := w.Stats()
	hot, idle := st.Loops[0], st.Loops[1]
	if idle.Accepted == 1 {
		hot, idle = idle, hot // the connection went to loop 1
	}
	t.Logf("busy: loop %d %v of %v (%.1f%%), loop %d %v of %v", hot.Index, hot.Busy, hot.Running, hot.BusyPercent(), idle.Index, idle.Busy, idle.Running)
	if hot.Busy < 500*time.Millisecond {
		t.Errorf("loop %d busy %v after 10 callbacks of 50 ms", hot.Index, hot.Busy)
	}
	if idle.Busy > hot.Busy/5 {
		t.Errorf("idle loop %d busy %v, loop %d %v", idle.Index, idle.Busy, hot.Index, hot.Busy)
	}
	if hot.Busy > hot.Running || hot.Running <= 0 {
		t.Errorf("busy %v more than running %v", hot.Busy, hot.Running)
	}
}

// Worker.Loops and Loop.Conns walk every open connection, each loop its
// own on its goroutine; Loops is nil before Run and after it returned.
func TestWalkConnections(t *testing.T) {
	t.Parallel()
	conns := make(chan *Conn, 5)
	w := &Worker{Addr: "tcp://127.0.0.1:0", Count: 2, Accept: AcceptRoundRobin, StopTimeout: 200 * time.Millisecond,
		OnConnect: func(c *Conn) { conns <- c }}
	if w.Loops() != nil {
		t.Fatal("Loops before Run")
	}
	r := startWorker(t, w)
	want := map[*Conn]bool{}
	for i := 0; i < 5; i++ {
		r.dial(t)
		want[acceptedConn(t, conns)] = true
	}
	got := map[*Conn]bool{}
	for _, l := range w.Loops() {
		onLoop(t, l, func() {
			l.Conns(func(c *Conn) bool {
				if c.Loop() != l {
					t.Errorf("conn %d listed by loop %d, belongs to %d", c.ID(), l.Index(), c.Loop().Index())
				}
				got[c] = true
				return true
			})
		})
	}
	if len(got) != len(want) {
		t.Fatalf("walked %d connections, want %d", len(got), len(want))
	}
	for c := range want {
		if !got[c] {
			t.Errorf("conn %d not walked", c.ID())
		}
	}
	// Stopping early.
	n := 0
	onLoop(t, w.Loops()[0], func() { w.Loops()[0].Conns(func(*Conn) bool { n++; return false }) })
	if n != 1 {
		t.Errorf("f returning false: %d calls, want 1", n)
	}
	r.cancel()
	r.wait(t)
	if w.Loops() != nil {
		t.Error("Loops after Run returned")
	}
}
