//go:build linux || darwin || freebsd

package herd

import (
	"container/heap"
	"errors"
	"fmt"
	"runtime"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/seed358e4494/herd/internal/bufpool"
	"github.com/seed358e4494/herd/internal/poll"
	"github.com/seed358e4494/herd/protocol"
)

// readBufferSize is the per-loop buffer every read lands in first.
const readBufferSize = 64 << 10

// Loop is one event loop: a goroutine (locked to an OS thread with
// Worker.LockOSThread) with its own poller, connections and timers. Its
// methods are safe from any goroutine.
type Loop struct {
	w      *Worker
	index  int
	poller *poll.Poller

	// Owned by the loop goroutine.
	acc      acceptor // its own listener (fd -1 when connections come from the dispatcher)
	conns    []*Conn  // by descriptor
	nconns   int
	readBuf  []byte
	events   []poll.Event
	timers   timerHeap
	now      time.Time
	draining bool
	forced   bool
	hot      bool   // the last sleeping Wait found events
	turn     uint32 // counts Waits; never 0 once running

	// Lingering connections, oldest first, and the one timer that looks
	// at them when the oldest is due.
	lingerHead, lingerTail *Conn
	lingerTimer            *Timer

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

	// Counters, written by the loop (and by Send for the output ones) and
	// read by Stats.
	accepted, closedConns, messagesIn, bytesIn, bytesOut, wakeups, emptyAccepts, dropped, droppedFull atomic.Uint64
	active, sendQueued                                                                                atomic.Int64
	_                                                                                                 [64]byte // keep loops' counters off each other's cache lines
}

type taskKind uint8

const (
	taskFunc taskKind = iota
	taskConn
	taskClose
	taskAbort
	taskDropped
	taskBufferFull
	taskStop
	taskReleased
)

// task is work handed to a loop from elsewhere.
type task struct {
	kind  taskKind
	force bool
	fd    int
	c     *Conn
	peer  peerAddr
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
	l.acc = acceptor{w: w, fd: -1, poller: p, owner: fmt.Sprintf("loop %d", index), take: l.adopt, empty: &l.emptyAccepts, batch: 1}
	return l, nil
}

// Index is the loop's position, 0 to Count-1.
func (l *Loop) Index() int { return l.index }

// Now is the time the loop last woke up from its poller, taken once per
// wake-up before it runs that wake-up's callbacks: a clock that costs
// nothing to read, behind the real time by however long the callbacks of
// the current wake-up have run. Unlike the other methods, it may only be
// called on the loop's goroutine (from its callbacks).
func (l *Loop) Now() time.Time { return l.now }

// Worker is the worker the loop belongs to.
func (l *Loop) Worker() *Worker { return l.w }

// Post runs f on the loop. It reports false, and f never runs, once the loop
// has stopped.
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
	if l.w.LockOSThread {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		tid := threadID()
		l.switchBase = threadSwitches(tid)
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
		l.turn++
		l.now = time.Now()
		for _, ev := range l.events {
			switch {
			case ev.Wake:
			case ev.Fd == l.acc.fd && !l.draining:
				if l.acc.accept() {
					l.addTimer(restPeriod, 0, l.acc.resume)
				}
			default:
				if ev.Fd < len(l.conns) && l.conns[ev.Fd] != nil {
					l.serve(l.conns[ev.Fd], ev)
				}
			}
		}
		l.runTasks()
		l.timers.run(l)
	}
	l.taskMu.Lock()
	l.closed = true
	rest := l.tasks
	l.tasks = nil
	l.taskMu.Unlock()
	for _, t := range rest {
		switch t.kind {
		case taskConn:
			l.active.Add(-1)
			l.w.conns.Add(-1)
			unix.Close(t.fd)
		case taskFunc:
			l.callFunc(t.f) // Post said it would run
		}
	}
	l.callLoop(l.w.OnWorkerStop)
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
	if l.hot && timeout != 0 {
		l.events, err = l.poller.Wait(0, l.events)
		if err != nil || len(l.events) > 0 {
			return err
		}
		if !l.w.LockOSThread {
			// Let other goroutines run first. (A locked thread would
			// have to hand its P over and wait to get it back.)
			runtime.Gosched()
		}
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
		switch t.kind {
		case taskFunc:
			l.callFunc(t.f)
		case taskConn:
			if l.draining {
				l.active.Add(-1)
				l.w.conns.Add(-1)
				unix.Close(t.fd)
			} else {
				l.register(t.fd, &t.peer)
			}
		case taskClose:
			if t.c.queueEmpty() {
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
		case taskReleased:
			if t.c.holds.Load() == 0 {
				l.beginClose(t.c)
			}
		}
		*t = task{}
	}
	l.spare = tasks[:0]
}

// dropReportInterval is the least time between two reports of drops on a
// full queue for one connection: a peer that reads nothing cannot flood
// the log. Each report gives the count since the last.
const dropReportInterval = time.Second

// reportDrops tells OnError how many messages were dropped on a full queue
// since the last report, at most once per dropReportInterval.
func (l *Loop) reportDrops(c *Conn) {
	if c.state.Load() == connClosed {
		c.dropsPending.Store(0)
		return
	}
	if wait := time.Duration(c.lastDropReport + int64(dropReportInterval) - l.now.UnixNano()); wait > 0 {
		// Too soon: report later, with whatever accumulates meanwhile
		// (dropsPending stays above zero, so Send posts no more tasks).
		l.addTimer(wait, 0, func() { l.reportDrops(c) })
		return
	}
	if n := c.dropsPending.Swap(0); n > 0 {
		c.lastDropReport = l.now.UnixNano()
		l.callError(c, fmt.Errorf("%w (%d message(s))", ErrSendBufferFull, n))
	}
}

// bufferFull runs the OnBufferFull of a queue that filled up, unless the
// queue drained first and flush had it run then (before OnBufferDrain).
func (l *Loop) bufferFull(c *Conn) {
	if c.fullPending.Load() == 0 {
		return
	}
	c.fullPending.Add(-1)
	if c.state.Load() != connClosed && l.w.OnBufferFull != nil {
		l.callConn(l.w.OnBufferFull, c)
	}
}

// queueEmpty reports whether the send queue is empty.
func (c *Conn) queueEmpty() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.queuedLocked() == 0
}

// receiving reports whether the poller watches the connection for input
// (not paused by PauseRecv or Backpressure).
func (c *Conn) receiving() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.readOn
}

// adopt takes a connection the loop's own listener accepted.
func (l *Loop) adopt(fd int, peer *peerAddr) {
	l.active.Add(1)
	l.register(fd, peer)
}

// register adopts an accepted connection; its MaxConns slot and active
// count are already taken.
func (l *Loop) register(fd int, peer *peerAddr) {
	if l.w.ep.network == "tcp" && !nodelayInherited {
		unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	}
	if err := l.poller.Add(fd, true); err != nil {
		l.w.logger().Warn("herd: register connection", "loop", l.index, "err", err)
		l.active.Add(-1)
		l.w.conns.Add(-1)
		unix.Close(fd)
		return
	}
	c := &Conn{id: l.w.nextID.Add(1), fd: int32(fd), loop: l, peer: *peer, readOn: true, lastActive: l.now.UnixNano()}
	for fd >= len(l.conns) {
		l.conns = append(l.conns, make([]*Conn, len(l.conns)+64)...)
	}
	l.conns[fd] = c
	l.nconns++
	l.accepted.Add(1)
	if l.w.OnConnect != nil {
		l.callConn(l.w.OnConnect, c)
	}
}

// serve handles one readiness event of a connection.
func (l *Loop) serve(c *Conn, ev poll.Event) {
	if ev.Readable {
		l.read(c)
	}
	if ev.Writable && c.state.Load() != connClosed {
		f, err := c.flush()
		if err != nil {
			l.closeConn(c, err)
			return
		}
		c.lastActive = l.now.UnixNano()
		if f.fullFirst && l.w.OnBufferFull != nil {
			l.callConn(l.w.OnBufferFull, c)
		}
		if f.drained && l.w.OnBufferDrain != nil && c.state.Load() != connClosed {
			l.callConn(l.w.OnBufferDrain, c)
		}
		if f.resumed && len(c.in) > 0 && c.readable() {
			// Input read before the pause is delivered now: no new
			// input may come to trigger it.
			l.deliver(c, nil)
		}
		if f.emptied {
			l.queueEmptied(c)
		}
	}
}

// queueEmptied finishes a Close, an EOF or a graceful stop waiting on the
// queue.
func (l *Loop) queueEmptied(c *Conn) {
	if c.state.Load() != connClosing {
		return
	}
	switch {
	case c.peerClosed:
		l.closeConn(c, nil) // nothing more can arrive: no reset to fear
	case c.flags.Load()&flagNoLinger != 0 && (c.drainedTurn == l.turn || unreadBytes(int(c.fd)) == 0):
		// The peer is done by its protocol, and nothing is unread: a read
		// emptied the socket moments ago, in this turn, or the kernel says
		// so.
		l.closeConn(c, nil)
	default:
		l.linger(c)
	}
}

// read takes what the socket holds, at most one buffer per event so that
// other connections get their turn (the poller reports the rest again).
func (l *Loop) read(c *Conn) {
	st := c.state.Load()
	if st == connClosed {
		return
	}
	if st == connOpen && c.flags.Load()&(flagRecvPaused|flagBackpressure) != 0 {
		// Paused since the poller reported it: what waits stays in the
		// kernel, and an end of stream behind it stays unseen until the
		// input before it has been delivered.
		return
	}
	n, err := readFd(int(c.fd), l.readBuf)
	if n > 0 {
		l.bytesIn.Add(uint64(n))
		if st != connOpen {
			return // closing: the application is done with this input
		}
		c.lastActive = l.now.UnixNano()
		if n < len(l.readBuf) {
			c.drainedTurn = l.turn
		}
		l.deliver(c, l.readBuf[:n])
		return
	}
	if err == unix.EAGAIN {
		return
	}
	if err != nil && !errors.Is(err, unix.ECONNRESET) {
		l.closeConn(c, err)
		return
	}
	if st == connLingering || err != nil {
		l.closeConn(c, nil)
		return
	}
	l.peerEnded(c)
}

// peerEnded handles the end of the peer's stream (a half-close, or the
// first half of a close): what it sent before is answered, then the
// connection closes (at once if nothing is queued). While work for it is
// under way elsewhere (Hold), the connection stays open for that work's
// replies, reading nothing, until the last Release.
func (l *Loop) peerEnded(c *Conn) {
	c.mu.Lock()
	c.peerClosed = true
	if c.state.Load() == connOpen && c.holds.Load() > 0 {
		c.flags.Or(flagDrainWait)
		c.drainStop = true
		c.updateInterestLocked()
		c.mu.Unlock()
		if c.holds.Load() > 0 {
			return // Release posts taskReleased, which closes
		}
		c.mu.Lock()
	}
	if c.state.Load() == connOpen {
		c.state.Store(connClosing)
	}
	empty := c.queuedLocked() == 0
	if !empty {
		c.updateInterestLocked() // stop reading; write out the queue
	}
	c.mu.Unlock()
	if empty {
		l.closeConn(c, nil)
	} else if !c.lingerListed {
		l.watchClose(c)
	}
}

func readFd(fd int, b []byte) (int, error) {
	for {
		n, err := sysRead(fd, b)
		if err == unix.EINTR {
			continue
		}
		if n < 0 {
			n = 0
		}
		return n, err
	}
}

// deliver cuts data into messages and hands them to OnMessage. Data is the
// loop's read buffer: a packet that is not complete is copied to the
// connection's own buffer, the rest is used in place.
func (l *Loop) deliver(c *Conn, data []byte) {
	p := l.w.proto
	if p == nil {
		l.messagesIn.Add(1)
		l.callMessage(c, data)
		return
	}
	limit := l.w.maxPkg
	buf := data
	if len(c.in) > 0 {
		c.in = appendInput(c.in, data, limit)
		buf = c.in
	}
	for len(buf) > 0 && c.readable() {
		n, msg, err := cut(p, buf)
		if err != nil {
			l.closeConn(c, err)
			return
		}
		if n > limit || (n == 0 && len(buf) >= limit) {
			l.closeConn(c, fmt.Errorf("%w (%d bytes, limit %d)", ErrPackageTooLarge, max(n, len(buf)), limit))
			return
		}
		if msg == nil {
			break
		}
		buf = buf[n:]
		l.messagesIn.Add(1)
		l.callMessage(c, msg)
	}
	if c.state.Load() == connClosed {
		return
	}
	switch {
	case len(buf) == 0:
		bufpool.Put(c.in)
		c.in = nil
	case len(c.in) > 0:
		// buf is the tail of c.in: move it to the front.
		c.in = c.in[:copy(c.in, buf)]
	default:
		c.in = appendInput(bufpool.Get(len(buf)), buf, limit)
	}
}

// cut frames the first packet of buf with the protocol: its length n and,
// when it is complete, its decoded message (never nil then). A panic in the
// protocol or a negative length is an error, which closes the connection.
func cut(p protocol.Protocol, buf []byte) (n int, msg []byte, err error) {
	defer func() {
		if r := recover(); r != nil {
			n, msg, err = 0, nil, fmt.Errorf("%w: protocol %T: %v", ErrPanic, p, r)
		}
	}()
	n, err = p.Input(buf)
	switch {
	case err != nil:
		return 0, nil, fmt.Errorf("herd: malformed input: %w", err)
	case n < 0:
		return 0, nil, fmt.Errorf("herd: protocol %T: Input returned a negative length (%d)", p, n)
	case n == 0 || n > len(buf):
		return n, nil, nil
	}
	msg = p.Decode(buf[:n])
	if msg == nil {
		msg = buf[:0]
	}
	return n, msg, nil
}

// appendInput appends data to the unfinished input in, growing it no
// further than one read past limit: a packet that never completes holds at
// most MaxPackageSize plus a read buffer before it is refused.
func appendInput(in, data []byte, limit int) []byte {
	if need := len(in) + len(data); need > cap(in) {
		size := min(max(2*cap(in), need), max(limit+readBufferSize, need))
		in = append(make([]byte, 0, size), in...)
	}
	return append(in, data...)
}

// closeConn closes the descriptor and runs OnError (for err) and OnClose.
func (l *Loop) closeConn(c *Conn, err error) {
	c.mu.Lock()
	if c.state.Load() == connClosed {
		c.mu.Unlock()
		return
	}
	c.dropQueueLocked()
	c.state.Store(connClosed)
	c.wakeWritersLocked()
	c.mu.Unlock()
	// Every write happens under c.mu with the state open, so no other
	// goroutine can be using the descriptor now.
	unix.Close(int(c.fd))
	if c.lingerListed {
		l.unlinkLinger(c)
	}
	l.conns[int(c.fd)] = nil
	l.nconns--
	l.active.Add(-1)
	l.closedConns.Add(1)
	l.w.conns.Add(-1)
	bufpool.Put(c.in)
	c.in = nil
	if err != nil && !errors.Is(err, unix.ECONNRESET) && !errors.Is(err, unix.EPIPE) {
		l.callError(c, err)
	}
	if l.w.OnClose != nil {
		l.callConn(l.w.OnClose, c)
	}
}

// drain begins the loop's part of a stop. Graceful: stop accepting, read
// and answer what each connection has already sent, then close each one
// once its queue is written. Forced: close everything now.
func (l *Loop) drain(force bool) {
	if !l.draining {
		l.draining = true
		l.acc.stop()
		for _, c := range l.conns {
			if c == nil || force {
				continue
			}
			if c.state.Load() == connOpen && c.receiving() {
				// What the peer sent before the stop is answered: it was
				// received, even if the loop had not read it yet.
				for i := 0; i < 16 && c.state.Load() == connOpen; i++ {
					before := l.bytesIn.Load()
					l.read(c)
					if l.bytesIn.Load() == before {
						break
					}
				}
			}
			if c.holds.Load() > 0 {
				// Work under way elsewhere will still Send: stop reading
				// and wait for its Release (checked again after the flag
				// is up, so a Release in between is not missed).
				c.flags.Or(flagDrainWait)
				c.mu.Lock()
				c.drainStop = true
				c.updateInterestLocked()
				c.mu.Unlock()
				if c.holds.Load() > 0 {
					continue
				}
			}
			l.beginClose(c)
		}
	}
	if force {
		l.forced = true
		for _, c := range l.conns {
			if c != nil {
				l.closeConn(c, nil)
			}
		}
	}
}

// beginClose stops input and closes the connection once its queue is
// written (at once if it is empty).
func (l *Loop) beginClose(c *Conn) {
	c.mu.Lock()
	if c.state.Load() == connOpen {
		c.state.Store(connClosing)
		c.updateInterestLocked()
	}
	empty := c.queuedLocked() == 0
	c.mu.Unlock()
	if empty {
		l.queueEmptied(c)
	} else if !c.lingerListed {
		l.watchClose(c)
	}
}

// linger half-closes a connection whose queue is written and waits, at most
// StopTimeout, for the peer to close its side, discarding what it still
// sends: closing with unread input would make the kernel reset the
// connection and the peer could lose the answers just sent.
func (l *Loop) linger(c *Conn) {
	c.mu.Lock()
	c.state.Store(connLingering)
	err := unix.Shutdown(int(c.fd), unix.SHUT_WR)
	c.updateInterestLocked()
	c.mu.Unlock()
	if err != nil {
		l.closeConn(c, nil)
		return
	}
	c.lingerUnsent = -1
	l.listLinger(c)
}

// listLinger puts c at the end of the lingering list, due in StopTimeout.
// The grace is the same for all, so the list stays in the order of due
// times.
func (l *Loop) listLinger(c *Conn) {
	if c.lingerListed {
		l.unlinkLinger(c) // from watching its queue to watching the kernel's
	}
	c.lingerDue = l.now.Add(l.w.stopGrace).UnixNano()
	c.lingerListed = true
	c.lingerPrev, c.lingerNext = l.lingerTail, nil
	if l.lingerTail != nil {
		l.lingerTail.lingerNext = c
	} else {
		l.lingerHead = c
		l.armLinger(time.Unix(0, c.lingerDue))
	}
	l.lingerTail = c
}

// watchClose puts a closing connection whose queue is not yet written on the
// lingering list: if the queue does not shrink within StopTimeout (a peer
// that reads nothing), the connection is aborted.
func (l *Loop) watchClose(c *Conn) {
	c.lingerUnsent = -1
	l.listLinger(c)
}

func (l *Loop) unlinkLinger(c *Conn) {
	if c.lingerPrev != nil {
		c.lingerPrev.lingerNext = c.lingerNext
	} else {
		l.lingerHead = c.lingerNext
	}
	if c.lingerNext != nil {
		c.lingerNext.lingerPrev = c.lingerPrev
	} else {
		l.lingerTail = c.lingerPrev
	}
	c.lingerPrev, c.lingerNext, c.lingerListed = nil, nil, false
}

// armLinger makes the linger timer fire at when, or earlier if it already
// would.
func (l *Loop) armLinger(when time.Time) {
	t := l.lingerTimer
	if t == nil {
		t = &Timer{l: l, index: -1}
		t.f = l.sweepLinger
		l.lingerTimer = t
	}
	if t.index >= 0 {
		if when.Before(t.when) {
			t.when = when
			heap.Fix(&l.timers, t.index)
		}
		return
	}
	t.stopped.Store(false)
	t.when = when
	heap.Push(&l.timers, t)
}

// sweepLinger closes the lingering connections whose StopTimeout is over,
// unless what they still have to send (the kernel's unsent bytes, or the
// send queue of one still closing) went down since it was last looked at: a
// slow reader still taking the reply gets all of it, a peer that reads
// nothing is cut off.
func (l *Loop) sweepLinger() {
	for c := l.lingerHead; c != nil && c.lingerDue <= l.now.UnixNano(); c = l.lingerHead {
		l.unlinkLinger(c)
		var u int
		switch c.state.Load() {
		case connLingering:
			u = unsentBytes(int(c.fd)) // the kernel's, once our queue is written
		case connClosing:
			if u = c.SendQueueBytes(); u == 0 {
				l.queueEmptied(c)
				continue
			}
		default:
			continue
		}
		if u > 0 && (c.lingerUnsent < 0 || u < int(c.lingerUnsent)) {
			c.lingerUnsent = int32(min(u, 1<<31-1))
			l.listLinger(c)
			continue
		}
		l.closeConn(c, nil)
	}
	if l.lingerHead != nil {
		l.armLinger(time.Unix(0, l.lingerHead.lingerDue))
	}
}

// Callback wrappers: a panic closes the connection (if any) and is logged.

func (l *Loop) recovered(c *Conn, r any) {
	err := fmt.Errorf("%w: %v", ErrPanic, r)
	l.w.logger().Error("herd: callback panicked", "loop", l.index, "err", err, "stack", string(debug.Stack()))
	if c != nil {
		l.closeConn(c, err)
	}
}

func (l *Loop) callMessage(c *Conn, msg []byte) {
	defer func() {
		if r := recover(); r != nil {
			l.recovered(c, r)
		}
	}()
	if l.w.OnMessage != nil {
		l.w.OnMessage(c, msg)
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
	if l.w.OnError == nil {
		l.w.logger().Debug("herd: connection error", "conn", c.id, "err", err)
		return
	}
	defer func() {
		if r := recover(); r != nil {
			l.w.logger().Error("herd: OnError panicked", "loop", l.index, "panic", r, "stack", string(debug.Stack()))
		}
	}()
	l.w.OnError(c, err)
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

// startIdleSweep, every quarter of IdleTimeout, closes the connections that
// have been silent for longer than IdleTimeout, and aborts those whose close
// has made no progress for as long (a peer that reads nothing).
func (l *Loop) startIdleSweep() {
	idle := l.w.IdleTimeout
	period := max(idle/4, time.Millisecond)
	l.addTimer(period, period, func() {
		limit := l.now.Add(-idle).UnixNano()
		for _, c := range l.conns {
			if c == nil || c.lastActive >= limit || c.holds.Load() > 0 || c.flags.Load()&flagDrainWait != 0 {
				// Held: a reply is being made elsewhere, and will be
				// sent; the connection is not idle.
				continue
			}
			switch c.state.Load() {
			case connOpen:
				c.lastActive = l.now.UnixNano() // the close gets its own IdleTimeout
				c.Close()
			case connClosing:
				c.Abort()
			}
		}
	})
}

func (l *Loop) stats() LoopStats {
	return LoopStats{
		Index:          l.index,
		Accepted:       l.accepted.Load(),
		Active:         l.active.Load(),
		Closed:         l.closedConns.Load(),
		MessagesIn:     l.messagesIn.Load(),
		BytesIn:        l.bytesIn.Load(),
		BytesOut:       l.bytesOut.Load(),
		Wakeups:        l.wakeups.Load(),
		EmptyAccepts:   l.emptyAccepts.Load(),
		SendQueueBytes: l.sendQueued.Load(),
		Dropped:        l.dropped.Load(),
		DroppedFull:    l.droppedFull.Load(),
		ThreadSwitches: l.threadSwitches(),
	}
}

// threadSwitches is the voluntary context switches of the loop's thread
// since the loop started.
func (l *Loop) threadSwitches() uint64 {
	tid := l.tid.Load()
	if tid == 0 {
		return l.switchFinal.Load()
	}
	return threadSwitches(int(tid)) - l.switchBase
}
