//go:build linux || darwin || freebsd

package herd

// A connection's life on its loop: adopted when accepted, served, and
// closed in one of the ways Conn promises: after its queue is written and
// the peer has ended its side (linger), at once (Abort), when idle, or in
// a graceful stop; and the send-queue events the loop reports (drops,
// OnBufferFull).

import (
	"errors"
	"fmt"
	"time"

	"golang.org/x/sys/unix"

	"github.com/seed358e4494/herd/internal/bufpool"
	"github.com/seed358e4494/herd/internal/sock"
)

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

// adopt takes a connection the loop's own listener accepted; its MaxConns
// slot is already taken.
func (l *Loop) adopt(fd int, peer *sock.Peer) {
	l.active.Add(1)
	if l.w.ep.network == "tcp" && !sock.NodelayInherited {
		sock.SetNoDelay(fd)
	}
	if err := l.poller.Add(fd, true); err != nil {
		l.w.logger().Warn("herd: register connection", "loop", l.index, "err", err)
		l.active.Add(-1)
		l.w.conns.Add(-1)
		sock.Close(fd)
		return
	}
	addr, name := peer.Split()
	c := &Conn{id: l.w.nextID.Add(1), fd: int32(fd), peer: addr, readOn: true, lastActive: l.now.UnixNano()}
	if name != "" {
		c.rare = &connRare{peerName: name}
	}
	c.loop.Store(l)
	l.attach(c)
	l.accepted.Add(1)
	if l.w.TLS != nil {
		l.startTLS(c) // OnConnect once the handshake is done
		return
	}
	if l.w.OnConnect != nil {
		l.callConn(l.w.OnConnect, c)
	}
}

// attach puts c in the loop's table of connections, by descriptor.
func (l *Loop) attach(c *Conn) {
	fd := int(c.fd)
	if fd >= len(l.conns) {
		l.growConns(fd)
	}
	l.conns[fd] = c
	l.nconns++
}

// growConns makes the table reach fd. Descriptors are numbered over the
// process, so each loop's table spans them all: it grows by a quarter
// (and to a multiple of 1,024 slots), not by doubling, which left up to
// half of it unused, 8 bytes per slot on every loop (an idle connection
// costs about 200 bytes in all).
func (l *Loop) growConns(fd int) {
	n := max(fd+1, len(l.conns)+len(l.conns)/4)
	n = (n + 1023) &^ 1023
	grown := make([]*Conn, n)
	copy(grown, l.conns)
	l.conns = grown
}

// queueEmptied finishes a Close, an EOF or a graceful stop waiting on the
// queue.
func (l *Loop) queueEmptied(c *Conn) {
	if c.state.Load() != connClosing || c.flags.Load()&flagBroken != 0 {
		return // an aborted connection gets no end of stream: its close follows
	}
	switch {
	case c.flags.Load()&flagPeerEnded != 0:
		l.closeConn(c, nil) // nothing more can arrive: no reset to fear
	case c.flags.Load()&flagNoWait != 0 && (c.drainedTurn == l.turn || sock.UnreadBytes(int(c.fd)) == 0):
		// The peer is done by its protocol, and nothing is unread: a read
		// emptied the socket moments ago, in this turn, or the kernel says
		// so.
		l.closeConn(c, nil)
	default:
		l.linger(c)
	}
}

// peerEnded handles the end of the peer's stream (a half-close, or the
// first half of a close): what it sent before is answered, then the
// connection closes (at once if nothing is queued). While work for it is
// under way elsewhere (Hold), the connection stays open for that work's
// replies, reading nothing, until the last Release.
func (l *Loop) peerEnded(c *Conn) {
	c.mu.Lock()
	c.flags.Or(flagPeerEnded)
	c.mu.Unlock()
	if e, ok := c.h.(EndHandler); ok && c.state.Load() == connOpen {
		l.callConn(e.OnEnd, c)
		// Read no more, unless OnEnd's Close made that moot.
		c.mu.Lock()
		c.updateInterestLocked()
		c.mu.Unlock()
		return
	}
	if c.state.Load() == connOpen && l.awaitRelease(c) {
		return // Release posts taskReleased, which closes
	}
	l.beginClose(c)
}

// awaitRelease stops a held connection's input until its last Release,
// which posts taskReleased (that closes it). It reports false if no Hold
// is left: checked again once the flag is up, so that a Release in
// between is not missed.
func (l *Loop) awaitRelease(c *Conn) bool {
	if c.holds.Load() == 0 {
		return false
	}
	c.mu.Lock()
	c.flags.Or(flagDrainWait)
	c.updateInterestLocked()
	c.mu.Unlock()
	return c.holds.Load() > 0
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
	waiter := c.takeWaiterLocked()
	kp := c.kernelPipeLocked()
	if kp != nil {
		c.rare.kp = nil
	}
	c.mu.Unlock()
	if kp != nil {
		l.putPipe(kp)
	}
	if waiter != nil {
		l.unlink(waiter) // it waits for this queue no more
	}
	if c.fd < 0 {
		return // a dial still looking up its address: connect finds it closed
	}
	// Every write happens under c.mu with the state open, so no other
	// goroutine can be using the descriptor now.
	sock.Close(int(c.fd))
	if c.lingerListed {
		l.unlinkLinger(c)
	}
	l.conns[int(c.fd)] = nil
	l.nconns--
	l.active.Add(-1)
	l.leftShared()
	l.closedConns.Add(1)
	dialed := c.flags.Load()&flagDialed != 0
	if !dialed {
		l.w.conns.Add(-1)
	}
	bufpool.Put(c.pending())
	c.setPending(nil)
	if t := c.tlsOf(); t != nil {
		t.pipe.Close() // a handshake under way ends
		if c.flags.Load()&flagHandshaking != 0 {
			t.timer.Stop()
			if !t.admitted {
				l.hellos.remove(l, c, t)
				l.tlsFailed.Add(1) // handshakeDone counts the others
			}
			return // OnConnect never ran: neither OnError nor OnClose
		}
	}
	if dialed && c.flags.Load()&flagConnecting != 0 {
		// OnConnect never ran: the Dialer hears of the failure through
		// OnError only. A Handler (a Pipe set up early) is told of the
		// close, so that it can end what it joined to the connection.
		l.dialEnded(c, false, err)
		if h := c.h; h != nil {
			c.h = nil
			l.callConn(h.OnClose, c)
		}
		return
	}
	if err != nil && !errors.Is(err, unix.ECONNRESET) && !errors.Is(err, unix.EPIPE) {
		l.callError(c, err)
	}
	if h := c.h; h != nil {
		c.h = nil
		l.callConn(h.OnClose, c)
	}
	if f := c.callbacks(l.w).onClose; f != nil {
		l.callConn(f, c)
	}
	if dialed {
		l.dialEnded(c, true, nil)
	}
}

// drain begins the loop's part of a stop. Graceful: stop accepting, read
// and answer what each connection has already sent, then close each one
// once its queue is written. Forced: close everything now.
func (l *Loop) drain(force bool) {
	graceful := l.draining && l.heirs == nil // a loop leaving for Scale had no graceful phase
	if !l.draining {
		l.draining = true
		l.stopAcceptors()
		for _, c := range l.conns {
			if c == nil || force {
				continue
			}
			if c.flags.Load()&flagConnecting != 0 {
				l.stopConn(c) // nothing read yet
				continue
			}
			if c.state.Load() == connOpen && c.receiving() {
				// What the peer sent before the stop is answered: it was
				// received, even if the loop had not read it yet.
				for i := 0; i < 16 && c.state.Load() == connOpen; i++ {
					before := l.bytesIn.Load()
					l.read(c, false, false)
					if l.bytesIn.Load() == before {
						break
					}
				}
			}
			l.stopConn(c)
		}
	}
	if force {
		l.forced = true
		for _, c := range l.conns {
			if c == nil {
				continue
			}
			err := stopError(c)
			switch {
			case err != nil:
			case graceful && c.state.Load() == connOpen:
				// Still open after the graceful stop's time: held, or a
				// Stopper's stream in progress. It is cut, and a reset
				// says so where an end of stream could pass for whole.
				c.resetOnClose()
			}
			l.closeConn(c, err)
		}
	}
}

// stopError is what a stop that closes c reports: ErrWorkerClosed for a
// connect it ends (to the Dialer's OnError), else nothing.
func stopError(c *Conn) error {
	if c.flags.Load()&flagConnecting != 0 {
		return ErrWorkerClosed
	}
	return nil
}

// stopConn ends an open connection when the worker stops gracefully: a
// Stopper its own way, a held connection at its last Release, any other
// once its queue is written. A connect under way ends at once
// (ErrWorkerClosed to its Dialer), unless it is held: connected stops it
// once made.
func (l *Loop) stopConn(c *Conn) {
	if c.flags.Load()&flagConnecting != 0 {
		if c.holds.Load() == 0 {
			l.closeConn(c, ErrWorkerClosed) // nothing to finish
		}
		return
	}
	if st, ok := c.h.(Stopper); ok && c.state.Load() == connOpen {
		l.callConn(st.Stop, c) // the protocol ends it its own way
		return
	}
	if l.awaitRelease(c) {
		return // work under way elsewhere will still send
	}
	l.beginClose(c)
}

// stopAcceptors stops watching the loop's listeners for good.
func (l *Loop) stopAcceptors() {
	for _, a := range l.accs {
		a.stop()
	}
	l.accs = nil
}

// beginClose stops input and closes the connection once its queue is
// written (at once if it is empty).
func (l *Loop) beginClose(c *Conn) {
	c.closeNotify()
	c.mu.Lock()
	if c.state.Load() == connOpen {
		c.state.Store(connClosing)
	}
	c.updateInterestLocked() // a peer that has ended its side is read no more
	empty := c.queuedLocked() == 0
	c.mu.Unlock()
	if empty {
		l.queueEmptied(c)
	} else if !c.lingerListed {
		l.watchClose(c)
	}
}

// linger half-closes a connection whose queue is written and waits, at most
// LingerTimeout, for the peer to close its side, discarding what it still
// sends: closing with unread input would make the kernel reset the
// connection and the peer could lose the answers just sent.
func (l *Loop) linger(c *Conn) {
	c.mu.Lock()
	c.state.Store(connLingering)
	err := sock.ShutWrite(int(c.fd))
	c.updateInterestLocked()
	c.mu.Unlock()
	if err != nil {
		l.closeConn(c, nil)
		return
	}
	c.lingerUnsent = -1
	l.listLinger(c)
}

// listLinger puts c at the end of the lingering list, due in LingerTimeout.
// The grace is the same for all, so the list stays in the order of due
// times.
func (l *Loop) listLinger(c *Conn) {
	if c.lingerListed {
		l.unlinkLinger(c) // from watching its queue to watching the kernel's
	}
	c.lingerDue = l.now.Add(l.w.lingerFor).UnixNano()
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
// lingering list: if the queue does not shrink within LingerTimeout (a peer
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
	if l.lingerTimer == nil {
		l.lingerTimer = &Timer{l: l, index: -1, f: l.sweepLinger}
	}
	l.timers.arm(l.lingerTimer, when)
}

// sweepLinger closes the lingering connections whose LingerTimeout is over,
// unless what they still have to send (the kernel's unsent bytes, and the
// send queue of one still closing) went down since it was last looked at: a
// slow reader still taking the reply gets all of it, a peer that reads
// nothing is cut off.
func (l *Loop) sweepLinger() {
	for c := l.lingerHead; c != nil && c.lingerDue <= l.now.UnixNano(); c = l.lingerHead {
		l.unlinkLinger(c)
		var u int
		switch c.state.Load() {
		case connLingering:
			u = sock.UnsentBytes(int(c.fd)) // the kernel's, once our queue is written
		case connClosing:
			if u = c.SendQueueBytes(); u == 0 {
				l.queueEmptied(c)
				continue
			}
			// Our queue moves only when the kernel's has room again,
			// which a steady reader of a megabytes-deep socket buffer
			// frees slowly: the kernel's going down counts too.
			u += max(sock.UnsentBytes(int(c.fd)), 0)
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

// progressed reports whether c's peer has shown itself since limit: c
// read something or made progress writing, or the kernel's send queue (what
// the peer has not taken yet) changed since the last sweep, which counts as
// progress from now. A reader slower than the socket's buffer takes from
// the kernel for seconds without the loop writing; so may a pipe's slow
// side while its other side waits. A peer that takes nothing is cut after
// one IdleTimeout, or two if the kernel held bytes for it when the first
// began.
func (l *Loop) progressed(c *Conn, limit int64) bool {
	if c.lastActive >= limit {
		return true
	}
	n, before := c.lookUnsent()
	moved := n > 0 && n != before
	if moved {
		c.lastActive = l.now.UnixNano()
	}
	return moved
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
			if c == nil || c.flags.Load()&flagConnecting != 0 || l.progressed(c, limit) {
				continue // a connect has its own timeout
			}
			if e, ok := c.h.(*pipeEnd); ok && l.progressed(e.other, limit) {
				continue // a pipe is idle only when neither end moves
			}
			if c.holds.Load() > 0 || c.flags.Load()&flagDrainWait != 0 {
				// Held: a reply is being made elsewhere and will be sent;
				// the connection is not idle. Unless the reply is already
				// queued and the peer has taken nothing of it for as long:
				// then it cannot be delivered.
				if c.SendQueueBytes() > 0 {
					c.Abort()
				}
				continue
			}
			switch c.state.Load() {
			case connOpen:
				c.lastActive = l.now.UnixNano() // the close gets its own IdleTimeout
				if c.pipeCut() {
					c.reset() // a cut stream must not end as if whole
					continue
				}
				c.Close()
			case connClosing:
				c.Abort()
			}
		}
	})
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
	r := c.rareAllocated()
	if wait := time.Duration(r.lastDropReport + int64(dropReportInterval) - l.now.UnixNano()); wait > 0 {
		// Too soon: report later, with whatever accumulates meanwhile
		// (dropsPending stays above zero, so Send posts no more tasks).
		l.addTimer(wait, 0, func() { l.reportDrops(c) })
		return
	}
	if n := c.dropsPending.Swap(0); n > 0 {
		r.lastDropReport = l.now.UnixNano()
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
	if c.state.Load() != connClosed {
		l.bufferFullNow(c)
	}
}

// bufferFullNow runs OnBufferFull.
func (l *Loop) bufferFullNow(c *Conn) {
	if f := c.callbacks(l.w).onBufferFull; f != nil {
		l.callConn(f, c)
	}
}

// bufferDrained runs OnBufferDrain.
func (l *Loop) bufferDrained(c *Conn) {
	if f := c.callbacks(l.w).onBufferDrain; f != nil {
		l.callConn(f, c)
	}
}
