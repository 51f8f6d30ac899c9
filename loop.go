//go:build linux || darwin || freebsd

package herd

// The event loop (start here): run waits on the poller, serves each
// readiness event (input.go), runs the tasks other goroutines posted (new
// connections from the acceptor, Close, Send's follow-ups, Post) and the
// timers due. A connection's life on its loop is in lifecycle.go, its
// state and send queue in connection.go, how connections reach loops in
// accept.go and listener.go, and Scale's hand-overs in scale.go.

import (
	"fmt"
	"runtime"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/seed358e4494/herd/internal/poll"
	"github.com/seed358e4494/herd/internal/sock"
)

// readBufferSize is the per-loop buffer every read lands in first.
const readBufferSize = 64 << 10

// Loop is one event loop: a goroutine (locked to an OS thread with
// Worker.LockOSThread) with its own poller, connections and timers. Its
// methods are safe from any goroutine except Now and Conns, which only the
// loop itself may call.
type Loop struct {
	w      *Worker
	index  int
	poller *poll.Poller

	// Owned by the loop goroutine.
	accs     []*acceptor // its listeners: more than one after Scale moved some here
	heirs    []*Loop     // set when the loop leaves (Scale): they take what still comes to it
	conns    []*Conn     // by descriptor
	nconns   int
	readBuf  []byte
	plainBuf []byte        // TLS plaintext, made on first use
	hellos   helloList     // TLS connections whose ClientHello has not come whole, oldest first
	pipes    []*kernelPipe // empty kernel pipes kept for Pipe's splicing
	pkt      Packet        // the one OnPacket is running for
	// atMark is sock.UrgentByteAtMark, or a test's stand-in (nil: the
	// former; see readAtMarkAgain).
	atMark func(fd int) bool
	// endFollows is set while a read is delivered after which the peer's
	// end of stream is known to follow (Pipe sends it on with MSG_MORE).
	endFollows bool
	dg         *dgramBatch // udp:// buffers (Linux: recvmmsg, sendmmsg), made on first use
	events     []poll.Event
	// again holds the connections to serve in the next turn with no new
	// event: edge-triggered, a connection whose read filled the buffer,
	// or whose flush stopped at maxFlush, is not reported again for what
	// it has left.
	again, againSpare []pending
	timers            timerHeap
	now               time.Time
	draining          bool
	forced            bool
	exiting           bool      // the loop has left its run loop: only ending what is left
	hot               bool      // the last sleeping Wait found events
	idleFrom          time.Time // when the loop went idle in this wait; zero if it did not
	turn              uint32    // counts Waits; never 0 once running

	// Lingering connections, oldest first, and the one timer that looks
	// at them when the oldest is due.
	lingerHead, lingerTail *Conn
	lingerTimer            *Timer

	datagramFd  atomic.Int64  // a udp:// worker's socket for SendTo; -1: none
	sleeping    atomic.Bool   // in or about to enter poller.Wait
	tid         atomic.Int64  // the OS thread the loop is locked to; 0 once it exited
	switchBase  uint64        // the thread's voluntary switches when the loop started
	switchFinal atomic.Uint64 // switches over the loop's life, once it exited
	pending     atomic.Bool   // tasks wait
	taskMu      sync.Mutex
	tasks       []task
	spare       []task
	closed      bool // no more tasks accepted (under taskMu)
	exited      chan struct{}

	// kernelDrops counts the datagrams the kernel dropped on the loop's
	// udp:// sockets, as it reports them (datagram_linux.go).
	kernelDrops atomic.Uint64

	// Counters, written by the loop (and by Send for the output ones) and
	// read by Stats.
	accepted, closedConns, messagesIn, bytesIn, bytesOut, wakeups, emptyAccepts, dropped, droppedFull, oversize, tlsHandshakes, tlsFailed, dialed, dialFailed, spliced, movedIn, movedOut atomic.Uint64
	active, sendQueued, busyNanos                                                                                                                                                         atomic.Int64
	exitedAt                                                                                                                                                                              atomic.Int64 // unix nanoseconds when run ended; 0 while it runs
	started                                                                                                                                                                               time.Time    // set before the loop goroutine starts
	_                                                                                                                                                                                     [64]byte     // keep loops' counters off each other's cache lines
}

type taskKind uint8

const (
	taskFunc taskKind = iota
	taskClose
	taskAbort
	taskDropped
	taskBufferFull
	taskStop
	taskReleased
	taskMoved // a connection handed over by a loop that leaves
	taskDial  // start a dialed connection's connect (its dialState has the address)
)

// task is work handed to a loop from elsewhere.
type task struct {
	kind  taskKind
	force bool
	c     *Conn
	err   error
	f     func()
}

func newLoop(w *Worker, index int) (*Loop, error) {
	p, err := poll.New(256)
	if err != nil {
		return nil, err
	}
	l := &Loop{
		w:       w,
		index:   index,
		poller:  p,
		readBuf: make([]byte, readBufferSize),
		exited:  make(chan struct{}),
	}
	l.datagramFd.Store(-1)
	return l, nil
}

// addListener makes the loop accept on fd, and watches it.
func (l *Loop) addListener(fd int, exclusive bool) error {
	a := &acceptor{w: l.w, loop: l, fd: fd, poller: l.poller, exclusive: exclusive, owner: fmt.Sprintf("loop %d", l.index), take: l.adopt, empty: &l.emptyAccepts, batch: 1}
	if l.w.ep.network == "udp" {
		a.datagram, a.batch = true, maxAcceptBatch
	}
	if err := a.watch(); err != nil {
		return err
	}
	if !a.datagram && l.w.shared != nil {
		a.shared = l.w.shared // joined just before the loops start
		a.acceptWaitingFn = a.acceptWaiting
	}
	l.accs = append(l.accs, a)
	if a.datagram {
		l.datagramFd.Store(int64(fd))
	}
	return nil
}

// acceptorOf is the loop's acceptor for the listener fd, or nil.
func (l *Loop) acceptorOf(fd int) *acceptor {
	for _, a := range l.accs {
		if a.fd == fd {
			return a
		}
	}
	return nil
}

// Index is the loop's position, 0 to Count-1.
func (l *Loop) Index() int { return l.index }

// Now is the time the loop last woke up from its poller, taken once per
// wake-up before it runs that wake-up's callbacks: a clock that costs
// nothing to read, behind the real time by however long the callbacks of
// the current wake-up have run. Unlike the other methods, it may only be
// called on the loop's goroutine (from its callbacks).
func (l *Loop) Now() time.Time { return l.now }

// Conns calls f for each open connection of the loop, until f returns
// false (Workerman's $worker->connections, one loop's share). Like Now, it
// may only be called on the loop's goroutine: from a callback, or from a
// function given to Post (see Worker.Loops).
func (l *Loop) Conns(f func(*Conn) bool) {
	for _, c := range l.conns {
		if c != nil && c.state.Load() == connOpen && !f(c) {
			return
		}
	}
}

// Worker is the worker the loop belongs to.
func (l *Loop) Worker() *Worker { return l.w }

// Post runs f on the loop. It reports false, and f never runs, once the loop
// has stopped. For work on a connection use Conn.Post: this loop may have
// handed the connection to another by the time f runs (Scale).
func (l *Loop) Post(f func()) bool { return l.post(task{kind: taskFunc, f: f}) }

func (l *Loop) post(t task) bool {
	l.taskMu.Lock()
	if l.closed {
		l.taskMu.Unlock()
		return false
	}
	l.tasks = append(l.tasks, t)
	l.pending.Store(true)
	l.taskMu.Unlock()
	// A busy loop runs its tasks before it next sleeps: only wake a
	// sleeping one. The loop sets sleeping before it looks at its tasks, so
	// one of the two always sees the other.
	if l.sleeping.Load() {
		l.poller.Wake()
	}
	return true
}

func (l *Loop) hasTasks() bool { return l.pending.Load() }

func (l *Loop) run() {
	defer close(l.exited)
	defer func() { l.exitedAt.Store(time.Now().UnixNano()) }()
	defer l.closePipes()
	if l.w.LockOSThread {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		tid := sock.ThreadID()
		l.switchBase = sock.ThreadSwitches(tid)
		l.tid.Store(int64(tid)) // publishes switchBase
		defer func() {
			// The thread outlives the loop: keep its count from this loop only.
			l.switchFinal.Store(l.threadSwitches())
			l.tid.Store(0)
		}()
	}
	l.now = time.Now()
	l.callLoop(l.w.OnWorkerStart)
	if l.w.IdleTimeout > 0 {
		l.startIdleSweep()
	}
	for {
		if l.draining && (l.nconns == 0 || l.forced) {
			break
		}
		err := l.wait()
		if err != nil {
			l.w.fail(fmt.Errorf("herd: loop %d: %w", l.index, err))
			l.drain(true)
			break
		}
		l.wakeups.Add(1)
		l.sharedTurn()
		l.turn++
		l.advanceClock()
		if len(l.again) > 0 {
			l.serveAgain()
		}
		for _, ev := range l.events {
			switch {
			case ev.Wake:
			case ev.Fd < len(l.conns) && l.conns[ev.Fd] != nil:
				l.serve(l.conns[ev.Fd], ev)
			case !l.draining:
				if a := l.acceptorOf(ev.Fd); a != nil && a.accept() {
					l.addTimer(restPeriod, 0, a.resume)
				}
			}
		}
		l.runTasks()
		l.timers.run(l.now, l.callFunc)
	}
	// What was posted and not run yet is ended, in a few rounds: the
	// callbacks that end it (a connect's OnError) may post more.
	l.exiting = true
	for round := 0; ; round++ {
		l.taskMu.Lock()
		rest := l.tasks
		l.tasks = nil
		if len(rest) == 0 || round == exitRounds-1 {
			l.closed = true // Post refuses from now on
		}
		closed := l.closed
		l.taskMu.Unlock()
		l.endTasks(rest)
		if closed {
			break
		}
	}
	l.callLoop(l.w.OnWorkerStop)
}

// exitRounds bounds the rounds in which a stopped loop ends the tasks
// posted to it, so that a callback that posts again each time cannot hold
// it.
const exitRounds = 8

// endTasks ends, as the loop exits, tasks it will not serve.
func (l *Loop) endTasks(rest []task) {
	for i := range rest {
		t := &rest[i]
		switch {
		case l.forward(t):
		case t.kind == taskMoved:
			// Handed over as the worker stopped, too late to be served.
			l.moveIn(t.c)
			l.closeConn(t.c, stopError(t.c))
		case t.kind == taskFunc:
			l.callFunc(t.f) // Post said it would run
		case t.kind == taskDial:
			l.connect(t.c) // the worker stops: it ends at once
		}
	}
}

// goIdle counts the time since the loop's last wake-up as busy, as it is
// about to wait (so Stats is current while it sleeps).
func (l *Loop) goIdle() {
	l.idleFrom = time.Now()
	if d := l.idleFrom.Sub(l.now); d > 0 {
		l.busyNanos.Add(int64(d))
	}
}

// advanceClock sets the loop's clock after a wait; a turn that did not go
// idle (more work was ready at once) was busy all along.
func (l *Loop) advanceClock() {
	now := time.Now()
	if l.idleFrom.IsZero() {
		if d := now.Sub(l.now); d > 0 {
			l.busyNanos.Add(int64(d))
		}
	}
	l.idleFrom = time.Time{}
	l.now = now
}

// wait fills l.events. After a turn that found work it first looks again
// without sleeping (a non-blocking system call): under load more is usually
// ready. If nothing is, an unlocked loop lets other goroutines run before it
// sleeps. Measured on Linux, this pattern spares most of the Go runtime's
// work around a loop that blocks in epoll_wait (its P taken away after 20µs
// and handed to another thread, woken for nothing; see bench/README.md).
func (l *Loop) wait() error {
	timeout := l.timers.timeout(l.now)
	var err error
	if len(l.again) > 0 {
		l.events, err = l.poller.Wait(0, l.events)
		l.hot = true
		return err
	}
	if l.hot && timeout != 0 {
		l.events, err = l.poller.Wait(0, l.events)
		if err != nil || len(l.events) > 0 {
			return err // busy on: no clock read for a turn that does not sleep
		}
		l.goIdle()
		if !l.w.LockOSThread {
			// Let other goroutines run first. (A locked thread would
			// have to hand its P over and wait to get it back.)
			runtime.Gosched()
		}
	} else {
		l.goIdle()
	}
	l.sleeping.Store(true)
	if l.hasTasks() {
		timeout = 0
	}
	l.events, err = l.poller.Wait(timeout, l.events)
	l.sleeping.Store(false)
	l.hot = len(l.events) > 0
	return err
}

func (l *Loop) runTasks() {
	l.taskMu.Lock()
	tasks := l.tasks
	l.tasks = l.spare[:0]
	l.pending.Store(false)
	l.taskMu.Unlock()
	for i := range tasks {
		t := &tasks[i]
		if l.forward(t) {
			*t = task{}
			continue
		}
		switch t.kind {
		case taskFunc:
			l.callFunc(t.f)
		case taskClose:
			if t.c.flags.Load()&flagConnecting != 0 {
				if t.c.queueEmpty() {
					l.closeConn(t.c, nil) // nothing to send: the connect is given up
				} // else the connect's end finishes the close
			} else if t.c.queueEmpty() {
				l.queueEmptied(t.c)
			} else if !t.c.lingerListed {
				l.watchClose(t.c)
			}
		case taskAbort:
			l.closeConn(t.c, t.err)
		case taskDropped:
			l.reportDrops(t.c)
		case taskBufferFull:
			l.bufferFull(t.c)
		case taskStop:
			l.drain(t.force)
		case taskMoved:
			l.moveIn(t.c)
		case taskDial:
			l.connect(t.c)
		case taskReleased:
			if t.c.holds.Load() == 0 {
				l.beginClose(t.c)
			}
		}
		*t = task{}
	}
	l.spare = tasks[:0]
}

// Timers: the loop's heap, filled from any goroutine through the task
// queue, or directly from the loop.

// AfterFunc runs f on the loop once, after d.
func (l *Loop) AfterFunc(d time.Duration, f func()) *Timer {
	return l.schedule(d, 0, f)
}

// Every runs f on the loop every d (at least a millisecond) until Stop. A
// run that is late does not make the next one early: runs never pile up.
func (l *Loop) Every(d time.Duration, f func()) *Timer {
	return l.schedule(max(d, time.Millisecond), max(d, time.Millisecond), f)
}

func (l *Loop) schedule(d, period time.Duration, f func()) *Timer {
	t := &Timer{l: l, period: period, f: f, index: -1}
	start := time.Now()
	l.post(task{kind: taskFunc, f: func() {
		if t.stopped.Load() {
			return
		}
		t.when = start.Add(d)
		l.timers.push(t)
	}})
	return t
}

// addTimer schedules f from the loop goroutine itself.
func (l *Loop) addTimer(d, period time.Duration, f func()) *Timer {
	t := &Timer{l: l, when: l.now.Add(d), period: period, f: f, index: -1}
	l.timers.push(t)
	return t
}

// stopTimer stops t from the loop goroutine itself: no task.
func (l *Loop) stopTimer(t *Timer) {
	t.stopped.Store(true)
	l.timers.remove(t)
}

// unschedule takes a stopped timer out of the heap (Timer.Stop).
func (l *Loop) unschedule(t *Timer) {
	l.post(task{kind: taskFunc, f: func() { l.timers.remove(t) }})
}

// Callback wrappers: a panic closes the connection (if any) and is logged.

func (l *Loop) recovered(c *Conn, r any) {
	err := fmt.Errorf("%w: %v", ErrPanic, r)
	l.w.logger().Error("herd: callback panicked", "loop", l.index, "err", err, "stack", string(debug.Stack()))
	if c != nil {
		l.closeConn(c, err)
	}
}

func (l *Loop) callHandler(c *Conn, data []byte) {
	defer func() {
		if r := recover(); r != nil {
			l.recovered(c, r)
		}
	}()
	c.h.OnData(c, data)
}

func (l *Loop) callMessage(c *Conn, msg []byte) {
	defer func() {
		if r := recover(); r != nil {
			l.recovered(c, r)
		}
	}()
	if f := c.callbacks(l.w).onMessage; f != nil {
		f(c, msg)
	}
}

func (l *Loop) callConn(f func(*Conn), c *Conn) {
	defer func() {
		if r := recover(); r != nil {
			l.recovered(c, r)
		}
	}()
	f(c)
}

func (l *Loop) callError(c *Conn, err error) {
	f := c.callbacks(l.w).onError
	if f == nil {
		l.w.logger().Debug("herd: connection error", "conn", c.id, "err", err)
		return
	}
	defer func() {
		if r := recover(); r != nil {
			l.w.logger().Error("herd: OnError panicked", "loop", l.index, "panic", r, "stack", string(debug.Stack()))
		}
	}()
	f(c, err)
}

func (l *Loop) callLoop(f func(*Loop)) {
	if f == nil {
		return
	}
	defer func() {
		if r := recover(); r != nil {
			l.recovered(nil, r)
		}
	}()
	f(l)
}

func (l *Loop) callFunc(f func()) {
	defer func() {
		if r := recover(); r != nil {
			l.recovered(nil, r)
		}
	}()
	f()
}
