//go:build linux || darwin || freebsd

package herd

import (
	"net"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/seed358e4494/herd/internal/bufpool"
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

// Conn is one accepted connection. It belongs to one loop for its whole
// life; its callbacks run there. Every method is safe from any goroutine.
type Conn struct {
	id uint64
	fd int32
	// drainedTurn is the loop turn in which a read last emptied the socket
	// (took less than a full buffer); see queueEmptied.
	drainedTurn uint32
	loop        *Loop
	peer        peerAddr

	// Owned by the loop goroutine.
	in         []byte // the start of a packet not yet complete
	lastActive int64  // loop clock (unix nanoseconds) of the last read or write progress
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

	mu         sync.Mutex // guards what follows, and writes to fd
	out        []byte     // send queue: out[outHead:] waits to be written
	outHead    int
	readOn     bool // the poller watches reads
	writeOn    bool // the poller watches writes
	userPaused bool // PauseRecv
	bpPaused   bool // paused by Backpressure
	drainStop  bool // a graceful stop waits for a Release: no more input
	full       bool // OnBufferFull fired; OnBufferDrain pending
	peerClosed bool // the peer ended its side (EOF)
	// lingerListed is owned by the loop; it sits here to keep Conn in a
	// smaller allocation class (an idle connection's whole cost).
	lingerListed bool
	ctx          any
}

// Conn.flags bits.
const (
	flagRecvPaused uint32 = 1 << iota // mirrors userPaused, checked between the messages of one read
	flagDrainWait                     // a graceful stop waits for the Holds to be Released
	flagNoLinger                      // CloseNoLinger: the peer sends nothing more
)

// Connection states. A Conn only moves forward through them.
const (
	connOpen      int32 = iota
	connClosing         // Close called: flush the queue, then close
	connLingering       // our side shut down for writing; waiting for the peer's end
	connClosed          // the descriptor is closed
)

// ID is unique among the connections of a Worker.
func (c *Conn) ID() uint64 { return c.id }

// Loop is the event loop the connection belongs to.
func (c *Conn) Loop() *Loop { return c.loop }

// RemoteAddr is the peer's address.
func (c *Conn) RemoteAddr() net.Addr { return c.peer.netAddr() }

// LocalAddr is the address the connection was accepted on, or nil once it is
// closed.
func (c *Conn) LocalAddr() net.Addr {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state.Load() == connClosed {
		return nil
	}
	sa, err := unix.Getsockname(int(c.fd))
	if err != nil {
		return nil
	}
	return netAddr(sa)
}

// Context returns the value stored by SetContext.
func (c *Conn) Context() any {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ctx
}

// SetContext stores one value of the application's with the connection.
func (c *Conn) SetContext(v any) {
	c.mu.Lock()
	c.ctx = v
	c.mu.Unlock()
}

// Send encodes msg with the worker's protocol and writes it. If the socket
// cannot take it all, the rest waits in the send queue. Send does not keep
// msg after it returns. It is safe from any goroutine; messages sent by one
// goroutine arrive in order, and each arrives whole.
func (c *Conn) Send(msg []byte) SendResult {
	p := c.loop.w.proto
	if p == nil {
		return c.send(msg)
	}
	bp := encodePool.Get().(*[]byte)
	*bp = p.Encode((*bp)[:0], msg)
	r := c.send(*bp)
	if cap(*bp) <= bufpool.MaxPooled {
		encodePool.Put(bp)
	}
	return r
}

// SendRaw writes b as it is, bypassing the protocol's Encode.
func (c *Conn) SendRaw(b []byte) SendResult { return c.send(b) }

var encodePool = sync.Pool{New: func() any { b := make([]byte, 0, 512); return &b }}

// send writes data directly when nothing is queued before it, and queues
// what the socket does not take. Writing on the caller's goroutine (under
// the connection's lock) spares a hand-off to the loop and lets Send say
// whether the bytes were written.
func (c *Conn) send(data []byte) SendResult {
	l := c.loop
	c.mu.Lock()
	if c.state.Load() != connOpen {
		c.mu.Unlock()
		l.dropped.Add(1)
		return Dropped
	}
	queued := len(c.out) - c.outHead
	if queued == 0 {
		n, err := writeFd(int(c.fd), data)
		if n > 0 {
			l.bytesOut.Add(uint64(n))
			data = data[n:]
		}
		if err != nil {
			c.brokenLocked()
			c.mu.Unlock()
			l.dropped.Add(1)
			l.post(task{kind: taskAbort, c: c, err: err})
			return Dropped
		}
		if len(data) == 0 {
			c.mu.Unlock()
			return Written
		}
	} else if max := l.w.maxSend; max > 0 && queued >= max {
		c.mu.Unlock()
		l.dropped.Add(1)
		if c.dropsPending.Add(1) == 1 {
			l.post(task{kind: taskDropped, c: c})
		}
		return Dropped
	}
	if c.out == nil {
		c.out = bufpool.Get(len(data))
	}
	c.out = append(c.out, data...)
	l.sendQueued.Add(int64(len(data)))
	queued += len(data)
	if max := l.w.maxSend; max > 0 && queued >= max && !c.full {
		c.full = true
		c.fullPending.Add(1)
		l.post(task{kind: taskBufferFull, c: c})
	}
	if l.w.Backpressure && queued >= l.w.highWater() {
		c.bpPaused = true
	}
	c.updateInterestLocked()
	c.mu.Unlock()
	return Queued
}

// writeFd writes until the socket would block. A nil error with n < len(b)
// means the socket is full.
func writeFd(fd int, b []byte) (int, error) {
	written := 0
	for written < len(b) {
		n, err := sysWrite(fd, b[written:])
		if n > 0 {
			written += n
		}
		switch err {
		case nil:
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return written, nil
		default:
			return written, err
		}
	}
	return written, nil
}

// flush writes the send queue on the loop when the socket is writable.
// It reports whether the queue emptied and a full queue drained, and
// whether the OnBufferFull of that full queue is still to run (before
// OnBufferDrain).
func (c *Conn) flush() (emptied, drained, fullFirst bool, err error) {
	l := c.loop
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state.Load() == connClosed {
		return false, false, false, nil
	}
	pending := c.out[c.outHead:]
	n, err := writeFd(int(c.fd), pending)
	if n > 0 {
		l.bytesOut.Add(uint64(n))
		l.sendQueued.Add(-int64(n))
		c.outHead += n
	}
	if err != nil {
		c.brokenLocked()
		return false, false, false, err
	}
	left := len(c.out) - c.outHead
	if left == 0 {
		bufpool.Put(c.out)
		c.out, c.outHead = nil, 0
		drained = c.full
		c.full = false
		// Under mu, so a Send that fills the queue again after this
		// keeps its own notification for the task it posted.
		if drained && c.fullPending.Load() > 0 {
			c.fullPending.Add(-1)
			fullFirst = true
		}
	} else if c.outHead >= len(c.out)/2 {
		// Reclaim the written half so a queue that keeps refilling does
		// not grow without bound.
		c.out = c.out[:copy(c.out, c.out[c.outHead:])]
		c.outHead = 0
	}
	if c.bpPaused && left <= l.w.lowWater() {
		c.bpPaused = false
	}
	c.updateInterestLocked()
	return left == 0, drained, fullFirst, nil
}

// brokenLocked forgets the queue of a connection whose socket failed.
func (c *Conn) brokenLocked() {
	if q := len(c.out) - c.outHead; q > 0 {
		c.loop.sendQueued.Add(-int64(q))
	}
	bufpool.Put(c.out)
	c.out, c.outHead = nil, 0
	if c.state.Load() < connClosing {
		c.state.Store(connClosing)
	}
}

// updateInterestLocked tells the poller what the connection waits for now.
func (c *Conn) updateInterestLocked() {
	st := c.state.Load()
	if st == connClosed {
		return
	}
	// A closing connection keeps reading, and discards what arrives: so
	// Close and linger need no change of interest, and input left unread
	// cannot make the final close reset the connection. Once the peer has
	// ended its side there is nothing more to read.
	read := (st != connOpen && !c.peerClosed) || (st == connOpen && !c.userPaused && !c.bpPaused && !c.drainStop)
	write := len(c.out) > c.outHead
	if read == c.readOn && write == c.writeOn {
		return
	}
	if err := c.loop.poller.Modify(int(c.fd), read, write); err != nil {
		c.loop.w.logger().Warn("herd: poller modify", "conn", c.id, "err", err)
		return
	}
	c.readOn, c.writeOn = read, write
}

// queuedLocked is the number of bytes waiting in the send queue.
func (c *Conn) queuedLocked() int { return len(c.out) - c.outHead }

// SendQueueBytes is the number of bytes waiting in the send queue.
func (c *Conn) SendQueueBytes() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.queuedLocked()
}

// Close closes the connection gracefully: it stops delivering input (what
// still arrives is discarded), writes out the send queue, ends our side of
// the stream and waits up to StopTimeout for the peer to end its side
// before closing the socket (closing with unread input
// would make the kernel reset the connection, and the peer could lose the
// last bytes sent). Messages sent after Close are dropped and counted. OnClose
// runs on the loop once the socket is closed. A queue that does not shrink
// for StopTimeout (a peer that reads nothing) is dropped and the connection
// aborted.
func (c *Conn) Close() { c.close(false) }

// CloseNoLinger is Close for a peer that, by its protocol, sends nothing
// more: an HTTP request with "Connection: close" read whole, a WebSocket
// peer whose close frame has arrived. Once the send queue is written the
// socket is closed at once, without waiting for the peer's end of stream,
// which spares a system call, a wake-up and a read per connection. If input
// is waiting in the kernel at that moment all the same, it lingers as Close
// does, so that the reset such a close would cause cannot cut the reply
// short.
func (c *Conn) CloseNoLinger() { c.close(true) }

func (c *Conn) close(noLinger bool) {
	c.mu.Lock()
	if c.state.Load() != connOpen {
		c.mu.Unlock()
		return
	}
	if noLinger {
		c.flags.Or(flagNoLinger)
	}
	c.state.Store(connClosing)
	c.updateInterestLocked()
	c.mu.Unlock()
	c.loop.post(task{kind: taskClose, c: c})
}

// Abort closes the connection at once, discarding its send queue
// (Workerman's destroy).
func (c *Conn) Abort() {
	c.mu.Lock()
	if c.state.Load() == connClosed {
		c.mu.Unlock()
		return
	}
	c.brokenLocked()
	c.mu.Unlock()
	c.loop.post(task{kind: taskAbort, c: c})
}

// Hold tells herd that work for this connection is under way off the loop,
// such as a reply being computed on another goroutine. A graceful stop then
// keeps the connection open (no longer reading) until the matching Release,
// so that the reply still goes out; the stop's context bounds the wait.
// Each Hold needs exactly one Release.
func (c *Conn) Hold() { c.holds.Add(1) }

// Release ends a Hold.
func (c *Conn) Release() {
	if c.holds.Add(-1) == 0 && c.flags.Load()&flagDrainWait != 0 {
		c.loop.post(task{kind: taskReleased, c: c})
	}
}

// PauseRecv stops reading from the connection until ResumeRecv. Data the
// peer sends meanwhile waits in the kernel, which in time makes the peer
// wait too.
func (c *Conn) PauseRecv() {
	c.mu.Lock()
	c.userPaused = true
	c.flags.Or(flagRecvPaused)
	c.updateInterestLocked()
	c.mu.Unlock()
}

// ResumeRecv undoes PauseRecv.
func (c *Conn) ResumeRecv() {
	c.mu.Lock()
	was := c.userPaused
	c.userPaused = false
	c.flags.And(^flagRecvPaused)
	c.updateInterestLocked()
	c.mu.Unlock()
	if was {
		// Messages already read but held back by the pause are delivered
		// on the loop; no new input may come to trigger it.
		l := c.loop
		l.post(task{kind: taskFunc, f: func() {
			if len(c.in) > 0 && c.readable() {
				l.deliver(c, nil)
			}
		}})
	}
}

// readable reports whether the loop should deliver input to the connection.
func (c *Conn) readable() bool {
	return c.state.Load() == connOpen && c.flags.Load()&flagRecvPaused == 0
}
