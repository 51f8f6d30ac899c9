//go:build linux || darwin || freebsd

package herd

import (
	"errors"
	"sync/atomic"

	"github.com/seed358e4494/herd/internal/sock"
)

// PipeOptions are Pipe's optional settings.
type PipeOptions struct {
	// AToB and BToA, if set, are added the bytes forwarded each way as
	// they go (per-backend figures of a balancer, say).
	AToB, BToA *atomic.Uint64
	// OnDone runs on the loop once both connections have closed, with the
	// bytes forwarded each way, and clean true if both peers ended their
	// streams (nothing was cut short by a reset, an error or a close).
	OnDone func(aToB, bToA uint64, clean bool)
	// Splice moves the bytes with splice(2) through a kernel pipe per
	// direction, without copying them through user space (Linux; ignored
	// elsewhere and for TLS connections), once they come in bulk: after a
	// read of 16 KiB or more, and until a read brings less. It costs two
	// descriptors per direction only while bytes are in flight (empty
	// pipes are pooled per loop), and pays off for bulk transfers:
	// see bench/README.md.
	Splice bool
	// Early is input a's handler took before the pipe (a proxy's client
	// data, read while its backend connected): forwarded to b first, and
	// counted in AToB, once both connections are known to be open, so
	// that none of it reaches b if a has gone.
	Early []byte
}

// ErrNotSameLoop is returned by Pipe for connections on different loops.
var ErrNotSameLoop = errors.New("herd: Pipe: the connections are on different loops")

// Pipe forwards what each connection receives to the other, as it comes,
// until both have ended (Workerman's pipe, both ways). It takes over both
// connections' input and their ends (as their Handler), and:
//
//   - holds back: while the connection it writes to has more than the
//     high mark queued (see Write), the one it reads from is not read,
//     until that queue is down to an eighth; so a peer that does not read
//     makes its counterpart wait, and the proxy holds at most about the
//     high mark per direction;
//   - passes a half-close on: when one peer ends its stream, the other
//     connection's write side is shut down once what was forwarded is
//     written (CloseWrite), and the other direction goes on; once both
//     peers have ended, both connections close;
//   - passes an abort on: a connection that closes before both ends were
//     seen (a reset, an error, IdleTimeout, Close or Abort on either)
//     aborts the other with a reset (RST for TCP), so its peer does not
//     take a cut stream for a whole one; and when the loop itself cuts a
//     piped stream (IdleTimeout), both connections are reset, so neither
//     peer sees an end of stream;
//   - stops softly: a graceful stop of the worker (Shutdown, Run's
//     context, RunAll's first signal, an upgrade once its UpgradeGrace is
//     over) takes no new connections but lets the pipe go on until both
//     peers have ended, as HAProxy's soft stop lets its sessions finish;
//     when the stop's context ends first (StopTimeout, for Run and
//     RunAll; RunAll's second signal ends it at once), both connections
//     are reset (Pipe's handlers are Stoppers). A pipe made while the
//     worker is already stopping is stopping from the start.
//
// What is forwarded is each stream's in-band bytes. TCP urgent data
// (MSG_OOB) is not forwarded as such: herd reads as read(2) does without
// SO_OOBINLINE (see the package documentation), and a spliced direction
// copies from its first urgent byte on (splice(2) stops at it).
//
// a and b must be on the same loop (else ErrNotSameLoop, and nothing is
// done), and Pipe must run there: in a callback of either, such as a
// dialed connection's OnConnect (Loop.Dial dials on the calling loop).
// If either is already closing or closed, both are reset and Pipe returns
// ErrConnClosed. Input either had already read and not delivered is
// forwarded first, and an end of stream either had already seen (through
// an EndHandler before Pipe) is passed on.
func Pipe(a, b *Conn, o *PipeOptions) error {
	l := a.Loop()
	if b.Loop() != l {
		return ErrNotSameLoop
	}
	if a.state.Load() != connOpen || b.state.Load() != connOpen {
		// One has gone (or is going) already: so does the other.
		a.reset()
		b.reset()
		return ErrConnClosed
	}
	p := &pipe{}
	if o != nil {
		p.opt = *o
	}
	splice := p.opt.Splice && spliceSupported && a.tlsOf() == nil && b.tlsOf() == nil
	// A connection that has had urgent data is copied from (see
	// Loop.urgent): what it reports of it came before the pipe.
	p.a = pipeEnd{p: p, other: b, count: p.opt.AToB, splice: splice && a.flags.Load()&flagUrgent == 0}
	p.b = pipeEnd{p: p, other: a, count: p.opt.BToA, splice: splice && b.flags.Load()&flagUrgent == 0}
	a.SetHandler(&p.a)
	b.SetHandler(&p.b)
	a.mu.Lock()
	a.rareLocked().piped = b
	a.mu.Unlock()
	b.mu.Lock()
	b.rareLocked().piped = a
	b.mu.Unlock()
	if l.draining {
		p.a.Stop(a) // the drain has already asked the others
	}
	if len(p.opt.Early) > 0 {
		p.a.OnData(a, p.opt.Early)
		p.opt.Early = nil
	}
	p.a.catchUp(a)
	p.b.catchUp(b)
	return nil
}

type pipe struct {
	a, b   pipeEnd
	opt    PipeOptions
	closed atomic.Int32 // connections closed, of two
	// stopping: the worker stops gracefully, and both sockets reset when
	// closed, unless the stream ends whole first (see Stop).
	stopping bool
}

// pipeEnd is the Handler of one connection of a pipe: it forwards to
// other.
type pipeEnd struct {
	p      *pipe
	other  *Conn
	count  *atomic.Uint64 // PipeOptions' AToB or BToA; nil if not set
	n      uint64         // bytes forwarded from this end
	ended  atomic.Bool    // this connection's peer ended its stream (read by the other end's OnClose)
	splice bool           // move the bytes with splice(2) when they come in bulk
	bulk   bool           // splice the next read: the last one was large
}

// spliceFrom is the read from which Pipe splices the next ones: small
// messages (a request, a reply) cost fewer system calls copied, since a
// splice takes two (socket to pipe, pipe to socket) where a copy takes a
// read and a write, and a kernel pipe besides; a stream that fills reads
// gains from not copying (HAProxy's splice-auto weighs it likewise).
const spliceFrom = 16 << 10

// catchUp forwards what c read before the pipe, and passes on an end of
// stream it saw then.
func (e *pipeEnd) catchUp(c *Conn) {
	if in := c.pending(); len(in) > 0 {
		c.setPending(nil)
		e.OnData(c, in)
	}
	if c.peerClosedNow() {
		e.OnEnd(c)
	}
}

func (e *pipeEnd) OnData(c *Conn, data []byte) {
	e.bulk = e.splice && len(data) >= spliceFrom
	l := c.Loop()
	mode := sendForward
	if l.endFollows {
		mode = sendForwardLast // OnEnd follows in this turn, and shuts other's side
	}
	r, ok := e.other.send(data, mode)
	if !ok {
		return // the other side is gone; its close ends this one
	}
	e.forwarded(len(data))
	if e.other.Loop() == l {
		e.other.lastActive = l.now.UnixNano() // forwarding to it is activity
	}
	// Written means the queue was and is empty: only a queued send can
	// have reached the high mark, and only then is the lock taken to see.
	if r == Queued && e.other.SendQueueBytes() >= l.w.highWater() {
		c.waitFor(e.other)
	}
}

func (e *pipeEnd) OnEnd(c *Conn) {
	e.ended.Store(true)
	both := e.peerEnd().ended.Load()
	if both && e.p.stopping {
		// Whole after all: close as usual, so that what is still in the
		// kernel's buffers is delivered, not dropped by a reset.
		c.lingerOn()
		e.other.lingerOn()
	}
	e.other.CloseWrite()
	if both {
		c.Close() // both ways done: nothing more to forward
	}
}

// Stop makes Pipe a Stopper: when the worker stops gracefully, the pipe
// goes on until both peers have ended their streams, as it would have,
// and then closes; should the stop's context end first, the loop closes
// what is left, and both sockets reset then, since a stream cut short
// must not look whole. Each of the two connections gets Stop, on the
// loop.
func (e *pipeEnd) Stop(c *Conn) {
	if e.p.stopping {
		return
	}
	e.p.stopping = true
	c.resetOnClose()
	e.other.resetOnClose()
}

func (e *pipeEnd) OnClose(c *Conn) {
	p := e.p
	clean := p.a.ended.Load() && p.b.ended.Load()
	if !clean {
		e.other.reset()
	}
	if p.closed.Add(1) == 2 && p.opt.OnDone != nil {
		p.opt.OnDone(p.a.n, p.b.n, clean)
	}
}

// forwarded counts n bytes forwarded from this end.
func (e *pipeEnd) forwarded(n int) {
	e.n += uint64(n)
	if e.count != nil {
		e.count.Add(uint64(n))
	}
}

// peerEnd is the pipe's other end.
func (e *pipeEnd) peerEnd() *pipeEnd {
	if e == &e.p.a {
		return &e.p.b
	}
	return &e.p.a
}

// waitFor stops reading c until dst's queue is down to the low mark. The
// pause comes first and the registration second, under dst's lock with
// the queue looked at again, so that a drain in between (on another loop)
// cannot be missed.
func (c *Conn) waitFor(dst *Conn) {
	c.mu.Lock()
	c.flags.Or(flagLinkPaused)
	c.updateInterestLocked()
	c.mu.Unlock()
	dst.mu.Lock()
	kp := dst.kernelPipeLocked()
	wait := dst.state.Load() != connClosed && (dst.queuedLocked() > dst.loop.Load().w.lowWater() || (kp != nil && kp.n > 0))
	if wait {
		dst.rareLocked().waiter = c
	}
	dst.mu.Unlock()
	if !wait {
		c.Loop().unlink(c)
	}
}

// pipedTo is the connection c is piped to, or nil.
func (c *Conn) pipedTo() *Conn {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.rare == nil {
		return nil
	}
	return c.rare.piped
}

// kernelPipeLocked is the kernel pipe holding bytes spliced for c, or nil;
// under mu.
func (c *Conn) kernelPipeLocked() *kernelPipe {
	if c.rare == nil {
		return nil
	}
	return c.rare.kp
}

// takeWaiterLocked returns the connection waiting for this one's queue to
// drain, if any, and forgets it; under mu.
func (c *Conn) takeWaiterLocked() *Conn {
	if c.rare == nil || c.rare.waiter == nil {
		return nil
	}
	w := c.rare.waiter
	c.rare.waiter = nil
	return w
}

// unlink resumes reading c, which waited for another connection's queue;
// l is the loop that saw the queue drain.
func (l *Loop) unlink(c *Conn) {
	c.mu.Lock()
	c.flags.And(^flagLinkPaused)
	c.updateInterestLocked()
	c.mu.Unlock()
	if c.Loop() == l {
		l.resumeInput(c)
	} else {
		c.Post(func() { c.Loop().resumeInput(c) })
	}
}

// reset aborts the connection with a TCP reset (SO_LINGER zero), so that
// its peer sees an abort, not an end of stream.
func (c *Conn) reset() {
	c.resetOnClose()
	c.Abort()
}

// resetOnClose makes the socket's close send a reset (SO_LINGER zero),
// whoever closes it.
func (c *Conn) resetOnClose() {
	c.mu.Lock()
	if c.state.Load() != connClosed && c.fd >= 0 {
		sock.ResetOnClose(int(c.fd), true)
	}
	c.mu.Unlock()
}

// lingerOn undoes resetOnClose: the socket's close ends the stream again.
func (c *Conn) lingerOn() {
	c.mu.Lock()
	if c.state.Load() != connClosed && c.fd >= 0 {
		sock.ResetOnClose(int(c.fd), false)
	}
	c.mu.Unlock()
}

// pipeCut reports whether closing c now would cut a pipe's stream short:
// c is piped and its pipe has not seen both ends. The loop then resets c
// rather than closing it (IdleTimeout): a Close would send its peer an
// end of stream, which the peer could not tell from a whole one, and
// Pipe resets the other connection as c closes. On c's loop.
func (c *Conn) pipeCut() bool {
	e, ok := c.h.(*pipeEnd)
	return ok && !(e.p.a.ended.Load() && e.p.b.ended.Load())
}
