//go:build linux || darwin || freebsd

package herd

// A connection: its state (open, closing, lingering, closed, moving
// forward only), the flags the loop reads without the lock, the send
// queue and its high and low marks, and the methods any goroutine may
// call (Send, Write, Close, Pause, Hold). What the loop does with it is in
// input.go and lifecycle.go.

import (
	"bytes"
	"context"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/seed358e4494/herd/internal/bufpool"
	"github.com/seed358e4494/herd/internal/poll"
	"github.com/seed358e4494/herd/internal/sock"
)

// SendResult tells what Send did with a message (Workerman's true / null /
// false).
type SendResult int

const (
	// Written: the socket took the whole message.
	Written SendResult = iota
	// Queued: part or all of the message waits in the send queue and will
	// be written when the socket has room.
	Queued
	// Dropped: the message was not sent, because the connection is closing
	// or closed, or its send queue is full (then OnError gets
	// ErrSendBufferFull; drops close together share one report, which
	// names how many messages it covers). Every drop is counted in Stats.
	Dropped
)

func (r SendResult) String() string {
	return [...]string{"written", "queued", "dropped"}[r]
}

// Conn is one connection, accepted by a Worker or dialed by a loop
// (Loop.Dial). It belongs to one loop at a time, and its callbacks (the
// Worker's, or its Dialer's) run there; Worker.Scale may hand it to another
// loop when its loop leaves (see LoopMover). Every method is safe from any
// goroutine except LastActive and SetHandler, which only its loop may call.
//
// Sending: the three methods differ in framing and in what a full send
// queue (MaxSendBufferSize) does to them. None blocks.
//
//	method   framing                  queue full                 for
//	Send     the protocol's Encode    dropped (SendResult)       pushed messages a slow peer may miss
//	SendRaw  none                     dropped (SendResult)       pre-framed pushes (a broadcast encoded once)
//	Write    none                     queued all the same;       replies and responses, owed to the peer;
//	                                  reading pauses meanwhile   from a goroutine, WaitWritable before each
//
// Closing: Close writes what is queued, ends the stream and waits (up to
// LingerTimeout) for the peer's end; CloseNoWait does not wait for it, for
// a peer whose protocol says it sends nothing more; CloseWrite ends this
// side only; Abort closes at once, dropping the queue.
type Conn struct {
	id uint64
	fd int32
	// drainedTurn is the loop turn in which a read last emptied the socket
	// (took less than a full buffer); see queueEmptied.
	drainedTurn uint32
	// loop owns the connection; Scale moves it to another (written under mu
	// by the loop it leaves, read anywhere).
	loop atomic.Pointer[Loop]
	peer sock.Addr // a named unix peer's name is in rare

	// Owned by the loop goroutine.
	h          Handler // takes input and the close instead of the protocol, if set
	in         *[]byte // the start of a packet not yet complete, boxed (see pending); nil when there is none
	lastActive int64   // loop clock (unix nanoseconds) of the last read or write progress
	// The loop's list of lingering connections, in the order of lingerDue.
	lingerPrev, lingerNext *Conn
	lingerDue              int64 // loop clock (unix nanoseconds) to look at the connection again
	lingerUnsent           int32 // kernel's unsent bytes at the last look, or -1

	// state is written under mu and read anywhere.
	state atomic.Int32
	// flags are bits the loop reads without taking mu (see flagRecvPaused).
	flags atomic.Uint32
	// fullPending counts the times the queue reached the limit for which
	// OnBufferFull has not run yet. Whichever comes first on the loop, the
	// task Send posted or the drain, runs it, so OnBufferDrain never comes
	// before its OnBufferFull. Incremented under mu; only the loop
	// decrements it.
	fullPending atomic.Int32
	// dropsPending counts messages dropped on a full queue not yet
	// reported to OnError: one report per burst, not one task per drop.
	dropsPending atomic.Int32
	// holds counts Holds not yet Released.
	holds atomic.Int32

	mu      sync.Mutex // guards what follows, and writes to fd
	q       *sendQueue // what waits to be written; nil when nothing does
	readOn  bool       // the poller watches reads
	writeOn bool       // the poller watches writes
	full    bool       // OnBufferFull fired; OnBufferDrain pending
	// lingerListed is owned by the loop; it sits here to keep Conn in a
	// smaller allocation class (an idle connection's whole cost).
	lingerListed bool
	// rare holds what few connections need, so that an idle one does not
	// pay for it; allocated on first use.
	rare *connRare
}

// connRare is the part of a Conn that few connections use.
type connRare struct {
	ctx            any           // SetContext (under mu)
	writable       chan struct{} // closed when the queue goes below the high mark (WaitWritable; under mu)
	lastDropReport int64         // loop clock of the last report of drops (reportDrops; loop-owned)
	unsent         int           // the kernel's send queue at the last look (lookUnsent; under mu)
	tls            *tlsState     // set once, before flagTLS, when the worker serves TLS
	dial           *dialState    // set once, before flagDialed, for a connection the loop dialed
	waiter         *Conn         // paused until this queue is low again (Pipe; under mu)
	piped          *Conn         // the other connection of its Pipe (under mu)
	kp             *kernelPipe   // bytes spliced for this connection, not yet written (Pipe with Splice; under mu)
	peerName       string        // a named unix peer's (set before the connection is published)
	markRetries    uint8         // reads in a row that gave up at the urgent mark (readAtMarkAgain; loop-owned)
	markTimer      *Timer        // the timer of the next such read, while one is set (loop-owned)
}

// pending is the start of a packet not yet complete; on the loop.
func (c *Conn) pending() []byte {
	if c.in == nil {
		return nil
	}
	return *c.in
}

// setPending keeps b as the start of a packet not yet complete (nil for
// none). The slice is boxed, so that an idle Conn holds 8 bytes for it,
// not 24 (with the peer address kept compact, Conn is 160 bytes).
func (c *Conn) setPending(b []byte) {
	switch {
	case b == nil && c.in != nil:
		bufpool.PutBox(c.in)
		c.in = nil
	case b == nil:
	case c.in == nil:
		c.in = bufpool.Box()
		fallthrough
	default:
		*c.in = b
	}
}

// rareAllocated returns c.rare, allocating it under mu: for the loop's
// own fields in it, which it then uses without mu (c.rare, once set, is
// not replaced).
func (c *Conn) rareAllocated() *connRare {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.rareLocked()
}

// rareLocked returns c.rare, allocating it; under mu.
func (c *Conn) rareLocked() *connRare {
	if c.rare == nil {
		c.rare = new(connRare)
	}
	return c.rare
}

// Conn.flags bits.
const (
	flagRecvPaused    uint32 = 1 << iota // PauseRecv (set under mu, as every input flag is; read anywhere)
	flagBackpressure                     // paused above the high mark (Write, or Backpressure)
	flagDrainWait                        // no more input: a graceful stop, or the peer's end of stream, waits for the Holds to be Released
	flagNoWait                           // CloseNoWait: the peer sends nothing more
	flagMoving                           // being handed to another loop (Scale): in no poller (set under mu)
	flagTLS                              // rare.tls is set: a TLS connection
	flagHandshaking                      // its TLS handshake is under way: no OnConnect yet, nor OnClose
	flagDialed                           // rare.dial is set: the loop dialed it, and its Dialer serves it
	flagConnecting                       // dialed, not yet connected: writes queue; no OnConnect yet, nor OnClose
	flagWriteShut                        // CloseWrite: our side ends once the queue is written (set under mu)
	flagLinkPaused                       // not read until the connection it forwards to drains (Pipe; set under mu)
	flagSelfEnd                          // Close or Abort was called: a Dialer does not reconnect
	flagPeerEnded                        // the peer ended its side (EOF)
	flagHandshakeFull                    // not read until its TLS handshake takes some of what it holds (set under mu)
	flagBroken                           // aborted, or its socket failed: closed by a task posted, with no graceful end before
	flagUrgent                           // TCP urgent data came: read until EAGAIN (see Loop.urgent)
	flagAtMark                           // reads gave up at the urgent mark since the last that took bytes (rare.markRetries; loop-owned)
)

// Flags that, on an open connection, stop its reading.
const flagsInputPaused = flagRecvPaused | flagBackpressure | flagLinkPaused | flagDrainWait | flagHandshakeFull

// Connection states. A Conn only moves forward through them.
const (
	connOpen      int32 = iota
	connClosing         // Close called: flush the queue, then close
	connLingering       // our side shut down for writing; waiting for the peer's end
	connClosed          // the descriptor is closed
)

// Handler takes over a connection's input and its end from the Worker's
// Protocol and OnMessage: it is how a protocol that keeps state per
// connection (HTTP, WebSocket) attaches that state to the Conn the loop
// owns. Its methods run on the connection's loop, and a panic in them
// closes the connection as one in a callback does.
type Handler interface {
	// OnData receives what one read returned; data is valid only during
	// the call.
	OnData(c *Conn, data []byte)
	// OnClose runs once the connection has closed, before the Worker's
	// OnClose.
	OnClose(c *Conn)
}

// A LoopMover is a Handler that keeps state on its connection's loop, such
// as timers or a list its loop sweeps. When Worker.Scale hands the
// connection to another loop, LeaveLoop runs on the loop it leaves (take
// the connection off what that loop keeps; stop its timers), then JoinLoop
// on the loop it joins (c.Loop() is the new loop), before any other
// callback runs for it there. A Handler that keeps no such state needs
// neither.
type LoopMover interface {
	Handler
	LeaveLoop(c *Conn)
	JoinLoop(c *Conn)
}

// A Stopper is a Handler with its own way to end a connection when the
// worker stops gracefully: a WebSocket server sends a close frame (1001,
// Going Away), an HTTP server closes once the response in progress is out.
// Shutdown calls Stop on the connection's loop, after what the peer had
// sent was delivered, instead of closing the connection itself; the
// handler then closes it (Shutdown's context still bounds the wait).
type Stopper interface {
	Handler
	Stop(c *Conn)
}

// An EndHandler is a Handler that decides itself what the peer's end of
// stream (its half-close) means: OnEnd runs on the loop instead of the
// close that would otherwise follow, and the connection stays open, read
// no more, for what this side still has to send (until Close, or
// CloseWrite, which then closes). A proxy passes the end on this way
// (Pipe does).
type EndHandler interface {
	Handler
	OnEnd(c *Conn)
}

// SetHandler hands the connection's input and its end to h from the next
// read on; nil gives them back to the Worker's Protocol and OnMessage.
// Unlike the other methods, it may only be called on the connection's loop
// (from OnConnect or another callback).
func (c *Conn) SetHandler(h Handler) { c.h = h }

// LastActive is when the connection last read something or made progress
// writing, on its loop's clock. Progress writing includes the kernel's: a
// reader slower than the socket's buffer takes from the kernel for seconds
// without the loop writing, and the kernel's send queue going down since
// the last call counts as progress now. Like Loop.Now, it may only be
// called on the connection's loop.
func (c *Conn) LastActive() time.Time {
	if c.state.Load() != connClosed {
		if n, before := c.lookUnsent(); n > 0 && n < before {
			c.lastActive = c.loop.Load().now.UnixNano()
		}
	}
	return time.Unix(0, c.lastActive)
}

// lookUnsent gives the bytes the kernel has yet to send for c, and what
// the last look found (then remembered as this one), for the loop to tell
// a slow reader that still takes from an idle one. n is 0 when nothing is
// unsent, or c has no socket; that look is not remembered.
func (c *Conn) lookUnsent() (n, before int) {
	if c.fd < 0 {
		return 0, 0
	}
	if n = sock.UnsentBytes(int(c.fd)); n <= 0 {
		return 0, 0
	}
	c.mu.Lock()
	r := c.rareLocked()
	before, r.unsent = r.unsent, n
	c.mu.Unlock()
	return n, before
}

// ID is unique among the connections of a Worker.
func (c *Conn) ID() uint64 { return c.id }

// Loop is the event loop the connection belongs to now. It changes only when
// Worker.Scale takes that loop away; a goroutine that wants to run
// something on the connection's loop should use Post, which follows it.
func (c *Conn) Loop() *Loop { return c.loop.Load() }

// Post runs f on the connection's loop, whichever loop that is when f runs:
// a connection handed over by Scale takes the functions posted to it along.
// It reports false, and f never runs, once the worker has stopped.
func (c *Conn) Post(f func()) bool { return c.post(task{kind: taskFunc, c: c, f: f}) }

// post hands t to the connection's loop. A loop that has left (Scale) no
// longer takes tasks, and by then the connection belongs to another: try
// that one.
func (c *Conn) post(t task) bool {
	for {
		l := c.loop.Load()
		if l.post(t) {
			return true
		}
		if c.loop.Load() == l {
			return false
		}
	}
}

// RemoteAddr is the peer's address.
func (c *Conn) RemoteAddr() net.Addr {
	name := ""
	if c.peer.Unix() {
		c.mu.Lock()
		if c.rare != nil {
			name = c.rare.peerName
		}
		c.mu.Unlock()
	}
	return c.peer.NetAddr(name)
}

// LocalAddr is the address the connection was accepted on, or nil once it is
// closed.
func (c *Conn) LocalAddr() net.Addr {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state.Load() == connClosed {
		return nil
	}
	return sock.NetAddr(sock.Name(int(c.fd)))
}

// Context returns the value stored by SetContext.
func (c *Conn) Context() any {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.rare == nil {
		return nil
	}
	return c.rare.ctx
}

// SetContext stores one value of the application's with the connection.
func (c *Conn) SetContext(v any) {
	c.mu.Lock()
	c.rareLocked().ctx = v
	c.mu.Unlock()
}

// Send encodes msg with the worker's protocol and writes it. If the socket
// cannot take it all, the rest waits in the send queue. Send does not keep
// msg after it returns. It is safe from any goroutine; messages sent by one
// goroutine arrive in order, and each arrives whole. A queue at
// MaxSendBufferSize drops the message (Workerman's policy for raw
// servers); use Write for bytes that must not be dropped.
func (c *Conn) Send(msg []byte) SendResult {
	p := c.callbacks(c.loop.Load().w).proto
	if p == nil {
		r, _ := c.send(msg, sendDroppable)
		return r
	}
	bp := encodePool.Get().(*[]byte)
	*bp = p.Encode((*bp)[:0], msg)
	r, _ := c.send(*bp, sendDroppable)
	if cap(*bp) <= bufpool.MaxPooled {
		encodePool.Put(bp)
	}
	return r
}

// SendRaw writes b as it is, bypassing the protocol's Encode. Like Send, it
// drops b when the send queue is full.
func (c *Conn) SendRaw(b []byte) SendResult {
	r, _ := c.send(b, sendDroppable)
	return r
}

// Write writes b as it is (no Encode) and never drops it for a full queue,
// nor waits: from a goroutine, call WaitWritable before each Write (as an
// io.Writer, Write queues without bound for a peer that does not read). It
// is for what a protocol owes its peer, such as responses and replies.
// What the socket does not take at once is queued, past MaxSendBufferSize
// if need be; while the queue is above the high mark (half of
// MaxSendBufferSize, or of 1 MiB when unlimited) the connection is not
// read, and input already read is not delivered, until it drains to an
// eighth. With WaitWritable first, a producer on another goroutine, and
// not the queue, waits for a slow peer.
//
// Write returns len(b) and nil once b is written or queued, and 0 and
// ErrConnClosed (nothing of b sent) once the connection is closing or
// closed. It does not keep b.
func (c *Conn) Write(b []byte) (int, error) {
	if _, ok := c.send(b, sendOwed); !ok {
		return 0, ErrConnClosed
	}
	return len(b), nil
}

// WaitWritable blocks until the send queue is below the high mark (see
// Write), and returns nil then; or ErrConnClosed once the connection is
// closing or closed; or ctx's error. It is for goroutines that produce
// output (streamed responses, pushed messages): it must not be called from
// a callback, since the loop it would wait for is the one it blocks.
func (c *Conn) WaitWritable(ctx context.Context) error {
	high := c.loop.Load().w.highWater()
	for {
		c.mu.Lock()
		switch {
		case c.state.Load() != connOpen:
			c.mu.Unlock()
			return ErrConnClosed
		case c.queuedLocked() < high:
			c.mu.Unlock()
			return nil
		}
		r := c.rareLocked()
		if r.writable == nil {
			r.writable = make(chan struct{})
		}
		ch := r.writable
		c.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// wakeWritersLocked wakes the goroutines in WaitWritable.
func (c *Conn) wakeWritersLocked() {
	if r := c.rare; r != nil && r.writable != nil {
		close(r.writable)
		r.writable = nil
	}
}

var encodePool = sync.Pool{New: func() any { b := make([]byte, 0, 512); return &b }}

// largeSend is the size from which a send's queued part is copied before
// the connection's lock is taken, so that the lock (which the loop takes
// too) is never held across a large copy.
const largeSend = 4 * bufpool.MaxPooled

// send writes data directly when nothing is queued before it (one system
// call, so a large send never holds the connection for long), and queues
// what the socket does not take. Writing on the caller's goroutine (under
// the connection's lock) spares a hand-off to the loop and lets Send say
// whether the bytes were written. ok is false when the connection is
// closing or closed.
func (c *Conn) send(data []byte, mode sendMode) (r SendResult, ok bool) {
	if t := c.tlsOf(); t != nil {
		return c.sendTLS(t, data, mode)
	}
	return c.sendBytes(data, mode)
}

// sendMode says what a send does when the queue is long.
type sendMode uint8

const (
	// sendDroppable drops the message on a full queue (Send, SendRaw).
	sendDroppable sendMode = iota
	// sendOwed never drops, and stops reading this connection above the
	// high mark (Write): a peer that does not read its replies stops being
	// read.
	sendOwed
	// sendForward never drops and leaves this connection's reading alone:
	// the sender pauses the connection the bytes come from (Pipe).
	sendForward
	// sendForwardLast is sendForward for the last bytes before this side
	// is shut down: written with MSG_MORE, so that the shutdown that
	// follows at once goes out in the same segment as they do.
	sendForwardLast
)

// sendBytes is send for bytes that go on the wire as they are: a plain
// connection's, or a TLS connection's records.
func (c *Conn) sendBytes(data []byte, mode sendMode) (r SendResult, ok bool) {
	var owned []byte
	if len(data) >= largeSend {
		owned = bytes.Clone(data)
	}
	c.mu.Lock()
	l := c.loop.Load() // under mu: the queue's bytes are counted on the loop that owns it
	if c.state.Load() != connOpen || c.flags.Load()&flagWriteShut != 0 {
		c.mu.Unlock()
		l.dropped.Add(1)
		return Dropped, false
	}
	queued := c.queuedLocked()
	if queued == 0 && c.flags.Load()&flagConnecting == 0 {
		n, err := writeOnce(int(c.fd), data, mode == sendForwardLast)
		if n > 0 {
			l.bytesOut.Add(uint64(n))
			data = data[n:]
		}
		if err != nil {
			c.brokenLocked()
			c.mu.Unlock()
			l.dropped.Add(1)
			c.post(task{kind: taskAbort, c: c, err: err})
			return Dropped, false
		}
		if len(data) == 0 {
			c.mu.Unlock()
			return Written, true
		}
	} else if max := l.w.maxSend; mode == sendDroppable && max > 0 && queued >= max {
		c.mu.Unlock()
		c.droppedFull(l)
		return Dropped, true
	}
	if c.q == nil {
		c.q = newSendQueue()
	}
	if owned != nil {
		c.q.pushOwned(owned[len(owned)-len(data):])
	} else {
		c.q.push(data)
	}
	l.sendQueued.Add(int64(len(data)))
	queued += len(data)
	if max := l.w.maxSend; max > 0 && queued >= max && !c.full {
		c.full = true
		c.fullPending.Add(1)
		c.post(task{kind: taskBufferFull, c: c})
	}
	if (mode == sendOwed || (mode == sendDroppable && l.w.Backpressure)) && queued >= l.w.highWater() {
		c.flags.Or(flagBackpressure)
	}
	c.updateInterestLocked()
	c.mu.Unlock()
	return Queued, true
}

// droppedFull counts a message dropped on a full send queue, and asks the
// loop to report it (one task for a burst of drops).
func (c *Conn) droppedFull(l *Loop) {
	l.dropped.Add(1)
	l.droppedFull.Add(1)
	if c.dropsPending.Add(1) == 1 {
		c.post(task{kind: taskDropped, c: c})
	}
}

// writeOnce is one write(2) (a send with MSG_MORE if more is set, where
// there is one): what the socket does not take now is queued.
func writeOnce(fd int, b []byte, more bool) (int, error) {
	for {
		var n int
		var err error
		if more {
			n, err = sock.SendMore(fd, b)
		} else {
			n, err = sock.Write(fd, b)
		}
		switch err {
		case nil:
			return n, nil
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return 0, nil
		default:
			return 0, err
		}
	}
}

// flush writes the send queue on the loop when the socket is writable.
// It reports whether the queue emptied and a full queue drained, whether
// the OnBufferFull of that full queue is still to run (before
// OnBufferDrain), and whether Backpressure's pause ended.
func (c *Conn) flush() (f flushResult, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	l := c.loop.Load()
	kp := c.kernelPipeLocked()
	if c.state.Load() == connClosed || (c.q == nil && kp == nil) {
		return f, nil
	}
	var n int
	if kp != nil {
		// What was spliced came before anything queued since.
		n, err = kp.writeTo(int(c.fd))
		if kp.n == 0 && err == nil {
			c.rare.kp = nil // an idle connection holds no pipe (flush runs on the loop)
			l.putPipe(kp)
		}
	}
	if c.q != nil && err == nil && (kp == nil || kp.n == 0) {
		var m int
		m, err = c.q.writeTo(int(c.fd))
		n += m
		// writeTo stops at maxFlush (another connection's turn) before
		// the socket is full, and only a full one is reported again.
		f.more = m >= maxFlush && c.q.n > 0
	}
	if n > 0 {
		l.bytesOut.Add(uint64(n))
		l.sendQueued.Add(-int64(n))
	}
	if err != nil {
		c.brokenLocked()
		return f, err
	}
	left := c.queuedLocked()
	if left == 0 {
		if c.q != nil {
			c.q.free()
			c.q = nil
		}
		if c.flags.Load()&flagWriteShut != 0 {
			c.shutWriteLocked()
		}
		f.emptied = true
		f.drained = c.full
		c.full = false
		// Under mu, so a Send that fills the queue again after this
		// keeps its own notification for the task it posted.
		if f.drained && c.fullPending.Load() > 0 {
			c.fullPending.Add(-1)
			f.fullFirst = true
		}
	}
	if left < l.w.highWater() {
		c.wakeWritersLocked()
	}
	if left <= l.w.lowWater() && (kp == nil || kp.n == 0) {
		f.waiter = c.takeWaiterLocked()
	}
	if c.flags.Load()&flagBackpressure != 0 && left <= l.w.lowWater() {
		c.flags.And(^flagBackpressure)
		f.resumed = true
	}
	c.updateInterestLocked()
	return f, nil
}

type flushResult struct {
	emptied, drained, fullFirst, resumed bool
	more                                 bool  // left to write, and the socket not full: serve again
	waiter                               *Conn // to resume: it waited for this queue to drain (Pipe)
}

// brokenLocked forgets the queue of a connection whose socket failed or
// that was aborted: no OnBufferDrain follows.
func (c *Conn) brokenLocked() {
	c.flags.Or(flagBroken)
	c.dropQueueLocked()
	c.full = false
	if c.state.Load() < connClosing {
		c.state.Store(connClosing)
	}
	c.wakeWritersLocked()
}

// dropQueueLocked discards the send queue. Bytes it still held are cut
// off: the socket's close will reset the connection, so that its peer does
// not take what it got for the whole stream.
func (c *Conn) dropQueueLocked() {
	if c.queuedLocked() > 0 && c.fd >= 0 && c.state.Load() != connClosed {
		sock.ResetOnClose(int(c.fd), true)
	}
	if c.q != nil {
		c.loop.Load().sendQueued.Add(-int64(c.q.n))
		c.q.free()
		c.q = nil
	}
	if kp := c.kernelPipeLocked(); kp != nil && kp.n > 0 {
		// Its bytes cannot be taken back out: the pipe goes, not to the
		// loop's pool (this may not be the loop's goroutine).
		c.loop.Load().sendQueued.Add(-int64(kp.n))
		c.rare.kp = nil
		kp.close()
	}
}

// updateInterestLocked tells the poller what the connection waits for now.
func (c *Conn) updateInterestLocked() {
	st := c.state.Load()
	if st == connClosed || c.flags.Load()&(flagMoving|flagConnecting) != 0 {
		// A moving connection is registered with its new loop's poller as
		// it is then; a connecting one when it has connected.
		return
	}
	if st == connClosing && c.flags.Load()&flagPeerEnded != 0 && c.queuedLocked() == 0 {
		// It closes in this turn or the next (queueEmptied), which takes
		// it out of the poller: a change now would be a wasted system
		// call, and an event meanwhile only closes it sooner.
		return
	}
	// A closing connection keeps reading, and discards what arrives: so
	// Close and linger need no change of interest, and input left unread
	// cannot make the final close reset the connection. Once the peer has
	// ended its side there is nothing more to read.
	read := !c.inputOff(st)
	write := c.q != nil || (c.rare != nil && c.rare.kp != nil && c.rare.kp.n > 0)
	if read == c.readOn && write == c.writeOn {
		return
	}
	l := c.loop.Load()
	if poll.EdgeTriggered {
		// Registered for everything once: only a resumed reading needs
		// the poller, to report again what came while it was off.
		rearm := read && !c.readOn
		c.readOn, c.writeOn = read, write
		if rearm {
			if err := l.poller.Modify(int(c.fd), true, true); err != nil {
				l.w.logger().Warn("herd: poller rearm", "conn", c.id, "err", err)
			}
		}
		return
	}
	if err := l.poller.Modify(int(c.fd), read, write); err != nil {
		l.w.logger().Warn("herd: poller modify", "conn", c.id, "err", err)
		return
	}
	c.readOn, c.writeOn = read, write
}

// queuedLocked is the number of bytes waiting in the send queue.
func (c *Conn) queuedLocked() int {
	n := 0
	if c.q != nil {
		n = c.q.n
	}
	if c.rare != nil && c.rare.kp != nil {
		n += c.rare.kp.n
	}
	return n
}

// SendQueueBytes is the number of bytes waiting in the send queue.
func (c *Conn) SendQueueBytes() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.queuedLocked()
}

// Close closes the connection gracefully: it stops delivering input (what
// still arrives is discarded), writes out the send queue, ends our side of
// the stream and waits up to LingerTimeout for the peer to end its side
// before closing the socket (closing with unread input
// would make the kernel reset the connection, and the peer could lose the
// last bytes sent). Messages sent after Close are dropped and counted. OnClose
// runs on the loop once the socket is closed. A queue that does not shrink
// for LingerTimeout (a peer that reads nothing) is dropped and the connection
// aborted.
func (c *Conn) Close() { c.close(false) }

// CloseNoWait is Close for a peer that, by its protocol, sends nothing
// more: an HTTP request with "Connection: close" read whole, a WebSocket
// peer whose close frame has arrived. Once the send queue is written the
// socket is closed at once, without waiting for the peer's end of stream,
// which spares a system call, a wake-up and a read per connection. If input
// is waiting in the kernel at that moment all the same, it lingers as Close
// does, so that the reset such a close would cause cannot cut the reply
// short.
func (c *Conn) CloseNoWait() { c.close(true) }

// CloseNoLinger is CloseNoWait's former name: in socket terms, "no linger"
// reads as an abortive close (a reset), which this is not.
//
// Deprecated: use CloseNoWait.
func (c *Conn) CloseNoLinger() { c.CloseNoWait() }

func (c *Conn) close(noLinger bool) {
	c.flags.Or(flagSelfEnd)
	c.closeNotify()
	c.mu.Lock()
	if c.state.Load() != connOpen {
		c.mu.Unlock()
		return
	}
	if noLinger {
		c.flags.Or(flagNoWait)
	}
	c.state.Store(connClosing)
	c.updateInterestLocked()
	c.mu.Unlock()
	c.post(task{kind: taskClose, c: c})
}

// Abort closes the connection at once, discarding its send queue
// (Workerman's destroy).
func (c *Conn) Abort() {
	c.flags.Or(flagSelfEnd)
	c.mu.Lock()
	if c.state.Load() == connClosed {
		c.mu.Unlock()
		return
	}
	c.brokenLocked()
	c.mu.Unlock()
	c.post(task{kind: taskAbort, c: c})
}

// Hold tells herd that work for this connection is under way off the loop,
// such as a reply being computed on another goroutine, and returns the
// Hold to release when it is done. Until then, the connection stays open
// for that reply: a graceful stop keeps it (no longer reading; the stop's
// context bounds the wait), a peer that ends its side of the stream (a
// half-close) is still answered, and IdleTimeout leaves it alone. A dialed
// connection held before its connect completes goes on connecting through
// a graceful stop, and once connected stops as the others do (a proxy
// holds its backend's connect this way, so that a session in flight at
// the stop is served). Each Hold is released once, by its own Release: a
// second Release does nothing, so it cannot end another goroutine's Hold.
func (c *Conn) Hold() *Hold {
	c.holds.Add(1)
	return &Hold{c: c}
}

// A Hold keeps a connection open for work under way off the loop (see
// Conn.Hold). It is safe to use from any goroutine.
type Hold struct {
	c    *Conn
	done atomic.Bool
}

// Release ends the Hold. Only its first call counts; Release on a nil
// Hold does nothing, so a field that may hold one can be released as is.
func (h *Hold) Release() {
	if h != nil && h.done.CompareAndSwap(false, true) {
		h.c.release()
	}
}

// Release ends one Hold of the connection, whichever; without one, it
// does nothing.
//
// Deprecated: call the Release of the Hold that Conn.Hold returns: a
// Release too many here ends another goroutine's Hold.
func (c *Conn) Release() { c.release() }

func (c *Conn) release() {
	for {
		h := c.holds.Load()
		if h <= 0 {
			return
		}
		if c.holds.CompareAndSwap(h, h-1) {
			if h == 1 && c.flags.Load()&flagDrainWait != 0 {
				c.post(task{kind: taskReleased, c: c})
			}
			return
		}
	}
}

// PauseRecv stops reading from the connection until ResumeRecv. Data the
// peer sends meanwhile waits in the kernel, which in time makes the peer
// wait too.
func (c *Conn) PauseRecv() {
	c.mu.Lock()
	c.flags.Or(flagRecvPaused)
	c.updateInterestLocked()
	c.mu.Unlock()
}

// ResumeRecv undoes PauseRecv.
func (c *Conn) ResumeRecv() {
	c.mu.Lock()
	was := c.flags.Load()&flagRecvPaused != 0
	c.flags.And(^flagRecvPaused)
	c.updateInterestLocked()
	c.mu.Unlock()
	if was {
		// Messages already read but held back by the pause are delivered
		// on the loop; no new input may come to trigger it.
		c.Post(func() { c.loop.Load().resumeInput(c) })
	}
}

// peerClosedNow reports whether the peer's end of stream has been seen.
func (c *Conn) peerClosedNow() bool { return c.flags.Load()&flagPeerEnded != 0 }

// inputOff reports that the connection's reading is off: its peer has
// ended its side, or it is open and paused (for any cause in
// flagsInputPaused). st is its state. The one predicate: the poller's
// interest (updateInterestLocked) and the loop's reads both use it.
func (c *Conn) inputOff(st int32) bool {
	f := c.flags.Load()
	return f&flagPeerEnded != 0 || st == connOpen && f&flagsInputPaused != 0
}

// readable reports whether the loop should deliver input to the
// connection: not what inputOff says. Input read before a graceful stop
// (flagDrainWait) is still delivered, since it was received before the
// stop, and flagHandshakeFull concerns what the TLS handshake has not yet
// taken, not what is delivered.
func (c *Conn) readable() bool {
	return c.state.Load() == connOpen && c.flags.Load()&(flagRecvPaused|flagBackpressure|flagLinkPaused) == 0
}

// CloseWrite ends this side of the stream once the send queue is written
// (a TCP half-close: shutdown(2) for writing; a TLS connection sends
// close_notify first), and goes on reading: the peer learns that nothing
// more comes, and may still answer. What is sent after it is dropped
// (Write returns ErrConnClosed). If the peer has already ended its side,
// CloseWrite is Close. The peer's end of stream, when it comes, closes
// the connection as usual, unless the Handler is an EndHandler.
func (c *Conn) CloseWrite() {
	c.mu.Lock()
	if c.state.Load() != connOpen || c.flags.Load()&flagWriteShut != 0 {
		c.mu.Unlock()
		return
	}
	if c.flags.Load()&flagPeerEnded != 0 {
		c.mu.Unlock()
		c.Close()
		return
	}
	c.mu.Unlock()
	c.closeNotify()
	c.mu.Lock()
	c.flags.Or(flagWriteShut)
	if c.queuedLocked() == 0 && c.flags.Load()&flagConnecting == 0 && c.state.Load() == connOpen {
		c.shutWriteLocked()
	}
	c.mu.Unlock()
}

// shutWriteLocked half-closes the socket; under mu, as writes are.
func (c *Conn) shutWriteLocked() {
	sock.ShutWrite(int(c.fd))
}

// shutWrite half-closes the socket.
func (c *Conn) shutWrite() {
	c.mu.Lock()
	if c.state.Load() != connClosed {
		c.shutWriteLocked()
	}
	c.mu.Unlock()
}
