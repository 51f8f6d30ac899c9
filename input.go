//go:build linux || darwin || freebsd

package herd

// A connection's readiness events on its loop: a connect completed, bytes
// written, input read and delivered (through its Handler, or cut into
// messages by its protocol for OnMessage), and input held back while the
// connection is paused and delivered once it resumes.

import (
	"errors"
	"fmt"
	"time"

	"golang.org/x/sys/unix"

	"github.com/seed358e4494/herd/internal/bufpool"
	"github.com/seed358e4494/herd/internal/poll"
	"github.com/seed358e4494/herd/internal/sock"
	"github.com/seed358e4494/herd/protocol"
)

// urgent: TCP urgent data (MSG_OOB) has come on c; epoll reports it as
// EPOLLPRI. A read stops short at its mark, with bytes behind it that no
// edge-triggered report announces again: c is read until EAGAIN from now
// on. Nor is every EAGAIN the end of what came: Linux's read gives up
// at the mark, having read nothing, when a signal is pending on the thread
// (the runtime's SIGURG preempts), and is tried again next turn while the
// urgent byte waits there (sock.UrgentByteAtMark). read(2) steps over the
// urgent byte (herd does not set SO_OOBINLINE), but splice(2) stops at the
// mark for good (EAGAIN, or 0 once the peer has ended: a cut stream that
// would look whole): a spliced pipe end copies.
func (l *Loop) urgent(c *Conn) {
	c.flags.Or(flagUrgent)
	if e, ok := c.h.(*pipeEnd); ok {
		e.splice, e.bulk = false, false
	}
}

// serve handles one readiness event of a connection.
func (l *Loop) serve(c *Conn, ev poll.Event) {
	if c.flags.Load()&flagConnecting != 0 {
		l.connected(c, ev.Failed)
		if !poll.EdgeTriggered || ev.Failed || c.state.Load() == connClosed {
			return
		}
		// What came with the connect's end is not reported again: the
		// queue is written now, and input read.
		ev.Writable = true
	}
	if ev.Urgent {
		l.urgent(c)
	}
	if ev.Readable {
		l.read(c, ev.Failed, ev.PeerEnd)
	}
	if ev.Writable && c.state.Load() != connClosed {
		f, err := c.flush()
		if err != nil {
			l.closeConn(c, err)
			return
		}
		c.lastActive = l.now.UnixNano()
		if f.fullFirst {
			l.bufferFullNow(c)
		}
		if f.drained && c.state.Load() != connClosed {
			l.bufferDrained(c)
		}
		if f.waiter != nil {
			l.unlink(f.waiter)
		}
		if f.resumed {
			// Input read before the pause is delivered now: no new
			// input may come to trigger it.
			l.resumeInput(c)
		}
		if f.emptied {
			l.queueEmptied(c)
		}
		if f.more && poll.EdgeTriggered {
			l.serveNextTurn(c, poll.Event{Fd: int(c.fd), Writable: true})
		}
	}
}

// pending is a connection to serve in the next turn as if the poller had
// reported ev.
type pending struct {
	c  *Conn
	ev poll.Event
}

// serveNextTurn has the next turn serve c as if the poller had reported
// ev (edge-triggered, it does not for what c has left).
func (l *Loop) serveNextTurn(c *Conn, ev poll.Event) {
	l.again = append(l.again, pending{c, ev})
}

// serveAgain serves the connections left for this turn by the last.
func (l *Loop) serveAgain() {
	list := l.again
	l.again = l.againSpare[:0]
	for i := range list {
		if c := list[i].c; l.serves(c) {
			l.serve(c, list[i].ev)
		}
		list[i] = pending{}
	}
	l.againSpare = list[:0]
}

// serves reports whether c is still this loop's: not closed (its
// descriptor maybe reused) nor moved to another loop since it was listed.
func (l *Loop) serves(c *Conn) bool {
	fd := int(c.fd)
	return fd >= 0 && fd < len(l.conns) && l.conns[fd] == c
}

// read takes what the socket holds, at most one buffer per event so that
// other connections get their turn (the rest is served next turn: reported
// again by a level-triggered poller, or listed by serveNextTurn).
// peerEnd says the poller saw the peer's end of stream: once a read takes
// less than a buffer, what is left is that end, and it is read in the same
// turn (no second wake-up; a Pipe forwarding the last bytes can send them
// with the end in one segment, see endFollows).
func (l *Loop) read(c *Conn, failed, peerEnd bool) {
	st := c.state.Load()
	if st == connClosed {
		return
	}
	if f := c.flags.Load(); poll.EdgeTriggered && failed && st == connOpen && f&flagsInputPaused != 0 && f&flagPeerEnded == 0 {
		// Hung up both ways (a proxied peer that sent its answer and
		// closed) while its reading is paused: the input before the
		// hang-up waits as it would have, however much the kernel holds,
		// unless the socket failed. Resuming re-arms it, and the poller
		// reports the hang-up again.
		if err := sock.PendingError(int(c.fd)); err != nil {
			l.closeConn(c, err)
		}
		return
	}
	if poll.EdgeTriggered && failed {
		// A failure is reported once: it is served again each turn until
		// the connection has closed, as a level-triggered poller would.
		defer func() {
			if c.state.Load() != connClosed {
				l.serveNextTurn(c, poll.Event{Fd: int(c.fd), Readable: true, Writable: true, Failed: true, PeerEnd: peerEnd})
			}
		}()
	}
	if failed && st == connOpen && c.flags.Load()&flagPeerEnded != 0 {
		// Its end of stream was seen (a reply is still being made under
		// Hold), and now the socket failed or hung up: the peer is gone
		// both ways, and would be reported again and again.
		l.closeConn(c, nil)
		return
	}
	if !failed && c.inputOff(st) {
		// Paused since the poller reported it, or its peer has ended its
		// side: what waits stays in the kernel, and an end of stream
		// behind it stays unseen until the input before it has been
		// delivered. Resuming has it reported again (level-triggered, by
		// watching it again; edge-triggered, by Modify). A failed socket
		// is read: the poller reports it even when it watches nothing,
		// and its peer is gone.
		return
	}
	if e, ok := c.h.(*pipeEnd); ok && e.bulk && st == connOpen && l.spliceRead(c, e) {
		return
	}
	buf := l.readBuf
	if c.flags.Load()&flagHandshaking != 0 && st == connOpen {
		if buf = l.handshakeInput(c, c.rare.tls); buf == nil {
			if failed && c.state.Load() != connClosed {
				l.closeConn(c, nil) // gone before its handshake was over
			}
			return
		}
	}
	n, err := readFd(int(c.fd), buf)
	if n > 0 {
		l.bytesIn.Add(uint64(n))
		f := c.flags.Load()
		urgent := f&flagUrgent != 0
		if f&flagAtMark != 0 {
			l.passedMark(c)
		}
		if poll.EdgeTriggered && (n == len(buf) || urgent) && !failed {
			l.serveNextTurn(c, poll.Event{Fd: int(c.fd), Readable: true, PeerEnd: peerEnd}) // more is left
		}
		if st != connOpen {
			return // closing: the application is done with this input
		}
		c.lastActive = l.now.UnixNano()
		if n < len(buf) && !urgent {
			c.drainedTurn = l.turn
		}
		if t := c.tlsOf(); t != nil {
			l.feedTLS(c, t, buf[:n])
			if peerEnd && n < len(buf) && poll.EdgeTriggered && c.state.Load() == connOpen {
				// The end came with it, and is not reported again: read
				// it next turn.
				l.serveNextTurn(c, poll.Event{Fd: int(c.fd), Readable: true, PeerEnd: true})
			}
			return
		}
		last := peerEnd && n < len(l.readBuf)
		l.endFollows = last
		l.deliver(c, l.readBuf[:n])
		l.endFollows = false
		if last && c.readable() {
			n, err = readFd(int(c.fd), l.readBuf[:1])
			if n == 0 && err == nil {
				l.peerEnded(c)
			} else if n > 0 {
				l.deliver(c, l.readBuf[:n]) // not the end after all
			}
		}
		return
	}
	if err == unix.EAGAIN {
		if poll.EdgeTriggered && !failed && c.flags.Load()&flagUrgent != 0 {
			l.readAtMarkAgain(c, peerEnd)
		}
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
	if c.flags.Load()&flagHandshaking != 0 {
		l.handshakePeerEnded(c, c.rare.tls)
		return
	}
	l.peerEnded(c)
}

// readAtMarkAgain: a read of c, which has had urgent data, said EAGAIN.
// If the urgent byte waits at the mark, that was no drained socket but a
// read that gave up there for a pending signal (see urgent): c is read
// again next turn, when the signal has been taken. After eight such reads
// in a row the next ones wait on a timer, from 1 ms doubling to 16: a
// kernel that reports an urgent byte and then drops its segment (a full
// receive window, on kernels without the beyond-window check, or memory
// pressure) would otherwise have the loop spin on c until the peer sends
// it again. (A signal does not stay pending that long but in a test that
// sends them without pause: there the reads go on every 16 ms.)
func (l *Loop) readAtMarkAgain(c *Conn, peerEnd bool) {
	atMark := l.atMark
	if atMark == nil {
		atMark = sock.UrgentByteAtMark
	}
	if !atMark(int(c.fd)) {
		return
	}
	r := c.rareAllocated()
	c.flags.Or(flagAtMark)
	if r.markTimer != nil {
		return // a read is already set
	}
	ev := poll.Event{Fd: int(c.fd), Readable: true, PeerEnd: peerEnd}
	if r.markRetries < 8 {
		r.markRetries++
		l.serveNextTurn(c, ev)
		return
	}
	d := time.Millisecond << min(r.markRetries-8, 4)
	if r.markRetries < 12 {
		r.markRetries++
	}
	r.markTimer = l.addTimer(d, 0, func() {
		if l.serves(c) { // else closed, or moved: its new loop cleared markTimer (moveIn)
			r.markTimer = nil
			l.serveNextTurn(c, ev)
		}
	})
}

// passedMark: a read of c took bytes after reads that gave up at the
// urgent mark. The next that does starts the count again, with no timer
// before it. (c.rare is set before flagAtMark: see rareAllocated.)
func (l *Loop) passedMark(c *Conn) {
	c.flags.And(^flagAtMark)
	r := c.rare
	r.markRetries = 0
	if r.markTimer != nil {
		l.stopTimer(r.markTimer)
		r.markTimer = nil
	}
}

func readFd(fd int, b []byte) (int, error) {
	for {
		n, err := sock.Read(fd, b)
		if err == unix.EINTR {
			continue
		}
		if n < 0 {
			n = 0
		}
		return n, err
	}
}

// resumeInput delivers what was read before a pause, once the connection
// may be read again: what its protocol kept, and a TLS connection's
// plaintext and ciphertext waiting in crypto/tls and its pipe.
func (l *Loop) resumeInput(c *Conn) {
	if len(c.pending()) > 0 && c.readable() {
		l.deliver(c, nil)
	}
	if t := c.tlsOf(); t != nil && c.flags.Load()&flagHandshaking == 0 {
		l.readTLS(c, t)
	}
}

// deliver cuts data into messages and hands them to OnMessage. Data is the
// loop's read buffer: a packet that is not complete is copied to the
// connection's own buffer, the rest is used in place.
func (l *Loop) deliver(c *Conn, data []byte) {
	if c.h != nil {
		l.messagesIn.Add(1)
		l.callHandler(c, data)
		return
	}
	p := c.callbacks(l.w).proto
	if p == nil {
		l.messagesIn.Add(1)
		l.callMessage(c, data)
		return
	}
	l.deliverFramed(c, p, data)
}

// deliverFramed cuts data, after what the connection kept of an unfinished
// packet, into the protocol's messages. A panic in the protocol (Input or
// Decode; OnMessage recovers its own) closes the connection, as a negative
// length does: one deferred recover per read, not per message.
func (l *Loop) deliverFramed(c *Conn, p protocol.Protocol, data []byte) {
	defer func() {
		if r := recover(); r != nil {
			l.closeConn(c, fmt.Errorf("%w: protocol %T: %v", ErrPanic, p, r))
		}
	}()
	limit := l.w.maxPkg
	buf := data
	if in := c.pending(); len(in) > 0 {
		buf = bufpool.AppendInput(in, data, 0, limit)
		c.setPending(buf)
	}
	for len(buf) > 0 && c.readable() {
		n, err := p.Input(buf)
		switch {
		case err != nil:
			l.closeConn(c, fmt.Errorf("herd: malformed input: %w", err))
			return
		case n < 0:
			l.closeConn(c, fmt.Errorf("herd: protocol %T: Input returned a negative length (%d)", p, n))
			return
		case n > limit || (n == 0 && len(buf) >= limit):
			l.closeConn(c, fmt.Errorf("%w (%d bytes, limit %d)", ErrPackageTooLarge, max(n, len(buf)), limit))
			return
		case n == 0 || n > len(buf):
			c.setPending(bufpool.KeepInput(c.pending(), buf, limit))
			return
		}
		msg := p.Decode(buf[:n])
		buf = buf[n:]
		l.messagesIn.Add(1)
		l.callMessage(c, msg)
	}
	if c.state.Load() != connClosed {
		c.setPending(bufpool.KeepInput(c.pending(), buf, limit))
	}
}
