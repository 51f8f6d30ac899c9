//go:build linux || darwin || freebsd

package herd

// TLS on the loops with the standard library's crypto/tls (no fork: its
// security fixes come with Go). The handshake runs off the loop, on a
// bounded pool of goroutines, against a pipe the loop fills with what the
// socket gives; after it, the loop drives the connection without a
// goroutine: ciphertext is fed to the pipe as it arrives and plaintext
// read until the pipe has nothing more (a temporary error, which
// crypto/tls does not keep), and writes encrypt straight into the send
// queue. Written here because no library drives crypto/tls this way.
//
// Admission: until a connection's ClientHello has arrived whole, it waits
// on the loop, costing no goroutine, no tls.Conn and no more than what it
// sent; what a connection may hold unread before its handshake is over is
// bounded per connection and per worker, and when the worker's budget is
// spent a newcomer evicts the oldest unfinished hello rather than be
// refused. A handshake goroutine that waits for its client's next flight
// gives its slot to the next handshake, so clients that stall after their
// hello cannot keep honest ones waiting either.

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/seed358e4494/herd/internal/bufpool"
)

// Defaults for zero-valued TLS fields of a Worker.
const (
	DefaultHandshakeTimeout = 10 * time.Second
	DefaultMaxHandshakes    = 256
)

// What a connection may have the server hold before its handshake is over.
const (
	// HandshakeInputLimit bounds the bytes a TLS connection may have
	// waiting, unread by crypto/tls, until its handshake is over: the
	// largest ClientHello herd takes (16 KiB, in one record or several)
	// and a little for what may follow it. A connection at the limit is
	// not read until its handshake has taken some.
	HandshakeInputLimit = recordHeaderLen + maxPlaintextRecord + 1024
	// HandshakeInputBudget bounds those bytes over a Worker's
	// connections whose handshake has no goroutine yet. When a read
	// would go past it, the loop closes the oldest connections of its
	// own whose ClientHello is unfinished to make room (clients that
	// hold half a hello cannot lock honest ones out); with none left to
	// close, a connection whose ClientHello is unfinished is closed, and
	// one whose handshake waits for a goroutine is not read until it has
	// one. Each is counted in TLSFailed. A handshake that has its
	// goroutine (at most MaxHandshakes compute; the others wait for
	// their client) reads within its own limit: the bound in all is this
	// budget plus HandshakeInputLimit per handshake goroutine.
	HandshakeInputBudget = 64 << 20

	recordHeaderLen     = 5
	maxPlaintextRecord  = 1 << 14 // TLSPlaintext.length (RFC 8446, 5.1)
	recordTypeHandshake = 22
	// maxClientHello is the largest ClientHello herd takes, a record's
	// worth: browsers' are under 2 KB (1.8 KB with a post-quantum key
	// share); crypto/tls itself would take 64 KiB.
	maxClientHello = maxPlaintextRecord
)

// handshakeBudget is HandshakeInputBudget; tests lower it.
var handshakeBudget int64 = HandshakeInputBudget

// plainHTTPReply is net/http's answer to an HTTP request sent to its TLS
// port, before it closes the connection.
const plainHTTPReply = "HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n"

// tlsState is a TLS connection's part of its Conn (in connRare).
type tlsState struct {
	pipe     tlsPipe
	conn     *tls.Conn   // made at admission
	timer    *time.Timer // ends the handshake at HandshakeTimeout from the accept
	expired  atomic.Bool // the timer fired
	admitted bool        // its ClientHello came whole: the handshake is queued or runs (loop-owned)
	// On the list of its loop's connections whose ClientHello has not
	// come whole (helloList), once it has sent something.
	helloLoop            *Loop
	helloPrev, helloNext *Conn
}

// tlsPipe is the net.Conn crypto/tls reads from and writes to: reads take
// what the loop fed from the socket, writes go to the connection's send
// queue as they are (records are never split or dropped).
type tlsPipe struct {
	c      *Conn
	mu     sync.Mutex
	fed    sync.Cond // signalled when in grows or the pipe closes
	in     []byte    // in[off:] is what crypto/tls has not read yet
	off    int
	lent   bool // in is the loop's read buffer, until keep
	block  bool // during the handshake: Read waits for the loop
	ended  bool // the peer's end of stream came after in: Read returns io.EOF once in is read
	closed bool
	// During the handshake: the unread bytes counted in the worker's
	// budget, the budget, the pool whose slot Read gives up while it
	// waits, whether the loop stopped reading (Read then has it resume),
	// and whether a goroutine has taken the handshake up.
	counted int
	budget  *atomic.Int64
	hs      *handshaker
	full    bool
	started bool // its goroutine has taken the handshake up

	// crypto/tls writes one record at a time, and a 64 KiB Send made
	// more than ten (small ones first, on a fresh connection): during a
	// Send the records gather in batch (a pooled buffer, up to 64 KiB)
	// and go out in one write per batch. batchMu keeps every write of the
	// pipe in order with the batch.
	batchMu  sync.Mutex
	batching bool
	batch    []byte
}

// errWouldBlock tells crypto/tls that nothing more has arrived: a
// temporary net.Error, which it returns without keeping.
var errWouldBlock = wouldBlock{}

type wouldBlock struct{}

func (wouldBlock) Error() string   { return "herd: no more TLS input for now" }
func (wouldBlock) Timeout() bool   { return true }
func (wouldBlock) Temporary() bool { return true }

func (p *tlsPipe) Read(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for p.off == len(p.in) {
		switch {
		case p.closed || p.ended:
			return 0, io.EOF
		case !p.block:
			return 0, errWouldBlock
		}
		// The handshake waits for its client: its slot goes to the next
		// one meanwhile, and is taken again (maybe after a wait, without
		// the lock the loop feeds under) once there is input.
		p.hs.park()
		for p.off == len(p.in) && !p.closed && !p.ended {
			p.fed.Wait()
		}
		p.mu.Unlock()
		p.hs.unpark()
		p.mu.Lock()
	}
	n := copy(b, p.in[p.off:])
	p.off += n
	p.uncount(n)
	if p.off == len(p.in) {
		// All read: an idle connection keeps no buffer here.
		p.in, p.off, p.lent = nil, 0, false
	}
	p.resumeLocked()
	return n, nil
}

// uncount takes n bytes the handshake has read, or that the pipe let
// go, out of the budget; under mu.
func (p *tlsPipe) uncount(n int) {
	if n = min(n, p.counted); n > 0 {
		p.counted -= n
		p.budget.Add(-int64(n))
	}
}

// room is how much the loop may read for a connection in its handshake.
// At its own limit, or with the worker's budget spent while its
// handshake waits for a goroutine, it is 0 and full is set: Read has the
// reading resume. With the budget short before its ClientHello came, it
// is minus what the budget lacks. A handshake that has its goroutine is
// not held to the budget: it reads what its client sends next, within
// its own limit.
func (p *tlsPipe) room(admitted bool) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := HandshakeInputLimit - (len(p.in) - p.off)
	if short := int64(n) - (handshakeBudget - p.budget.Load()); !p.started && short > 0 {
		if !admitted {
			return -int(short)
		}
		n = 0
	}
	if n <= 0 {
		p.full = true
		return 0
	}
	return n
}

// start marks the handshake as taken up by its goroutine. Reading stopped
// for the budget resumes: the budget holds it no more.
func (p *tlsPipe) start() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.started = true
	p.resumeLocked()
}

// resumeLocked has the loop read the connection again if it stopped for
// the pipe; under mu.
func (p *tlsPipe) resumeLocked() {
	if p.full {
		p.full = false
		c := p.c
		c.Post(func() { c.loop.Load().resumeHandshakeInput(c) })
	}
}

func (p *tlsPipe) Write(b []byte) (int, error) {
	p.batchMu.Lock()
	defer p.batchMu.Unlock()
	if p.batching {
		// Full (a large Send): what is gathered goes first, and gathering
		// goes on in the same buffer.
		if len(p.batch)+len(b) > cap(p.batch) && !p.sendBatchLocked() {
			return 0, ErrConnClosed
		}
		if len(b) <= cap(p.batch) {
			p.batch = append(p.batch, b...)
			return len(b), nil
		}
	}
	if _, ok := p.c.sendBytes(b, sendOwed); !ok {
		return 0, ErrConnClosed
	}
	return len(b), nil
}

// flushBatch writes the records gathered so far: whole records, in order,
// ahead of any written after them.
func (p *tlsPipe) flushBatch() {
	p.batchMu.Lock()
	defer p.batchMu.Unlock()
	p.sendBatchLocked()
}

// sendBatchLocked writes what is gathered and empties the batch; under
// batchMu. It reports false if the connection took none of it.
func (p *tlsPipe) sendBatchLocked() bool {
	if len(p.batch) == 0 {
		return true
	}
	_, ok := p.c.sendBytes(p.batch, sendOwed)
	p.batch = p.batch[:0]
	return ok
}

// oneRecord bounds a Send that crypto/tls writes as a single record (its
// smallest records carry about 1.2 KB): there is nothing to gather, and
// it goes as it comes, without a pooled buffer and a copy.
const oneRecord = 1 << 10

// encrypt has crypto/tls write data, its records gathered into one write
// (see batch).
func (p *tlsPipe) encrypt(conn *tls.Conn, data []byte) error {
	if len(data) <= oneRecord {
		_, err := conn.Write(data)
		return err
	}
	p.batchMu.Lock()
	if !p.batching {
		p.batching = true
		// Room for the records' headers and tags (5 + 16 bytes a record
		// of at least about 1 KB), within a pooled buffer: a larger Send
		// goes out in pieces of that size, none allocated.
		p.batch = bufpool.Get(min(len(data)+len(data)/32+64, bufpool.MaxPooled))
	}
	p.batchMu.Unlock()
	_, err := conn.Write(data)
	p.batchMu.Lock()
	defer p.batchMu.Unlock()
	if !p.sendBatchLocked() && err == nil {
		err = ErrConnClosed
	}
	bufpool.Put(p.batch) // sendBytes keeps none of it
	p.batching, p.batch = false, nil
	return err
}

// feed adds ciphertext read from the socket. After the handshake, when
// nothing is left over, b (the loop's read buffer) is lent rather than
// copied: crypto/tls reads it on the loop at once, and keep copies what
// it leaves.
func (p *tlsPipe) feed(b []byte) {
	p.mu.Lock()
	switch {
	case p.closed: // its handshake expired
	case !p.block && p.off == len(p.in):
		p.in, p.off, p.lent = b, 0, true
	default:
		p.in = append(p.in, b...)
		if p.block {
			p.counted += len(b)
			p.budget.Add(int64(len(b)))
		}
	}
	p.mu.Unlock()
	p.fed.Signal()
}

// scanHello looks at what is unread, before admission (see scanHello).
func (p *tlsPipe) scanHello() (head [recordHeaderLen]byte, n int, complete bool, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	b := p.in[p.off:]
	copy(head[:], b)
	complete, err = scanHello(b)
	return head, len(b), complete, err
}

// scanHello reports whether b, the first bytes of a connection, holds a
// whole ClientHello: handshake records (of a TLS record version, neither
// empty nor over 2^14 bytes) whose contents start with a ClientHello
// message of at most maxClientHello bytes, all of it there. An error says
// b cannot be the start of a TLS handshake herd takes.
func scanHello(b []byte) (complete bool, err error) {
	var hdr [4]byte // the handshake message's header: type, 24-bit length
	seen := 0       // handshake bytes so far
	for len(b) > 0 {
		if b[0] != recordTypeHandshake {
			return false, fmt.Errorf("herd: TLS: a record of type %d before the ClientHello was whole", b[0])
		}
		if len(b) < recordHeaderLen {
			return false, nil
		}
		if b[1] != 3 {
			return false, fmt.Errorf("herd: TLS: record version %#x%02x", b[1], b[2])
		}
		n := int(b[3])<<8 | int(b[4])
		if n == 0 || n > maxPlaintextRecord {
			return false, fmt.Errorf("herd: TLS: handshake record of %d bytes", n)
		}
		body := b[recordHeaderLen:min(len(b), recordHeaderLen+n)]
		for i := 0; seen+i < len(hdr) && i < len(body); i++ {
			hdr[seen+i] = body[i]
		}
		seen += len(body)
		if seen >= len(hdr) {
			const clientHello = 1
			size := len(hdr) + (int(hdr[1])<<16 | int(hdr[2])<<8 | int(hdr[3]))
			switch {
			case hdr[0] != clientHello:
				return false, fmt.Errorf("herd: TLS: handshake message of type %d, not a ClientHello", hdr[0])
			case size > maxClientHello:
				return false, fmt.Errorf("herd: TLS: ClientHello of %d bytes, over herd's %d", size, maxClientHello)
			case seen >= size:
				return true, nil
			}
		}
		if len(body) < n {
			return false, nil
		}
		b = b[recordHeaderLen+n:]
	}
	return false, nil
}

// endHandshake stops counting what the pipe holds in the budget: the
// handshake is over.
func (p *tlsPipe) endHandshake() {
	p.mu.Lock()
	p.block, p.full = false, false
	p.uncount(p.counted)
	p.mu.Unlock()
}

// keep copies what crypto/tls left of a lent buffer (its reading stopped
// on a pause), before the loop reads into that buffer again.
func (p *tlsPipe) keep() {
	p.mu.Lock()
	if p.lent {
		p.in, p.off, p.lent = append([]byte(nil), p.in[p.off:]...), 0, false
	}
	p.mu.Unlock()
}

func (p *tlsPipe) Close() error {
	p.mu.Lock()
	p.closed = true
	p.in, p.off, p.lent = nil, 0, false
	p.uncount(p.counted)
	p.mu.Unlock()
	p.fed.Broadcast()
	return nil
}

func (p *tlsPipe) LocalAddr() net.Addr              { return p.c.LocalAddr() }
func (p *tlsPipe) RemoteAddr() net.Addr             { return p.c.RemoteAddr() }
func (p *tlsPipe) SetDeadline(time.Time) error      { return nil }
func (p *tlsPipe) SetReadDeadline(time.Time) error  { return nil }
func (p *tlsPipe) SetWriteDeadline(time.Time) error { return nil }

// tlsOf is the connection's TLS state; nil for plain connections. The
// flag is set after the state, so a reader that sees it sees the state.
func (c *Conn) tlsOf() *tlsState {
	if c.flags.Load()&flagTLS == 0 {
		return nil
	}
	return c.rare.tls
}

// TLS is the connection's TLS state (negotiated version, ALPN, peer
// certificates), from OnConnect on; nil when it is not a TLS connection
// or its handshake is not over.
func (c *Conn) TLS() *tls.ConnectionState {
	t := c.tlsOf()
	if t == nil || c.flags.Load()&flagHandshaking != 0 {
		return nil
	}
	st := t.conn.ConnectionState()
	return &st
}

// startTLS makes an accepted connection a TLS one. Its handshake is
// queued once its first record has come (admitTLS); OnConnect runs once
// it is done. On the loop.
func (l *Loop) startTLS(c *Conn) {
	t := &tlsState{}
	t.pipe = tlsPipe{c: c, block: true, budget: &l.w.hsInput, hs: l.w.handshakes()}
	t.pipe.fed.L = &t.pipe.mu
	c.mu.Lock()
	c.rareLocked().tls = t
	c.mu.Unlock()
	c.flags.Or(flagTLS | flagHandshaking)
	// A runtime timer, not a goroutine, and not the loop's: it must find
	// the connection on whichever loop Scale has moved it to.
	t.timer = time.AfterFunc(l.w.handshakeTimeout(), func() {
		t.expired.Store(true)
		t.pipe.Close() // ends a handshake under way
		c.Post(func() { c.loop.Load().handshakeExpired(c, t) })
	})
}

// admitTLS looks at what a connection sent before its handshake was
// queued: once its ClientHello is whole, the handshake is queued. What
// cannot be a TLS handshake closes it; an HTTP request gets net/http's
// 400 first.
func (l *Loop) admitTLS(c *Conn, t *tlsState) {
	h, n, complete, err := t.pipe.scanHello()
	switch {
	case n == 0:
	case h[0] != recordTypeHandshake && n < recordHeaderLen && h[0] >= 'A' && h[0] <= 'Z':
		// Maybe a request line: wait for enough of it to tell.
	case h[0] != recordTypeHandshake && looksLikeHTTP(h[:min(n, recordHeaderLen)]):
		l.w.logger().Debug("herd: TLS handshake refused", "conn", c.id, "remote", c.RemoteAddr(), "err", "plain HTTP on a TLS port")
		// As net/http: the answer, then the close, without waiting for
		// the rest of a request nobody will read.
		c.sendBytes([]byte(plainHTTPReply), sendOwed)
		if c.queueEmpty() {
			l.closeConn(c, nil)
		} else {
			c.Close()
		}
	case err != nil:
		l.refuseTLS(c, err)
	case complete:
		l.hellos.remove(l, c, t)
		t.admitted = true
		t.conn = tls.Server(&t.pipe, l.w.TLS) // not before: a client that has not said hello costs none
		t.pipe.hs.queue(c, t)
	default:
		l.hellos.add(l, c, t)
	}
}

// looksLikeHTTP reports whether a record header is the start of an HTTP
// request, as net/http tells one sent to its TLS port.
func looksLikeHTTP(h []byte) bool {
	switch string(h) {
	case "GET /", "HEAD ", "POST ", "PUT /", "OPTIO":
		return true
	}
	return false
}

// refuseTLS closes a connection whose handshake never started
// (closeConn counts it).
func (l *Loop) refuseTLS(c *Conn, err error) {
	l.w.logger().Debug("herd: TLS handshake refused", "conn", c.id, "remote", c.RemoteAddr(), "err", err)
	l.closeConn(c, nil) // no OnConnect ran: no OnClose either (flagHandshaking)
}

// handshakeExpired closes a connection whose handshake had not started
// when its timeout came; one that had started fails in its goroutine.
func (l *Loop) handshakeExpired(c *Conn, t *tlsState) {
	if c.state.Load() == connClosed || t.admitted {
		return
	}
	l.refuseTLS(c, fmt.Errorf("herd: TLS handshake: %w", context.DeadlineExceeded))
}

// handshakeInput is the part of the loop's read buffer a connection in
// its handshake may be read into, nil when it must not be read now: its
// reading stops until the handshake takes some (room), or, refused, it
// is closed.
func (l *Loop) handshakeInput(c *Conn, t *tlsState) []byte {
	n := t.pipe.room(t.admitted)
	if n < 0 && l.hellos.evict(l, c, -n) {
		n = t.pipe.room(t.admitted)
	}
	switch {
	case n > 0:
		return l.readBuf[:min(n, len(l.readBuf))]
	case n == 0:
		c.mu.Lock()
		c.flags.Or(flagHandshakeFull)
		c.updateInterestLocked()
		c.mu.Unlock()
	default:
		l.refuseTLS(c, fmt.Errorf("herd: TLS handshake input over the worker's budget of %d bytes", handshakeBudget))
	}
	return nil
}

// helloList is a loop's TLS connections that have sent something but not
// yet a whole ClientHello, oldest first: when the worker's budget is
// spent, a newcomer's read evicts the oldest of them rather than be
// refused, so that clients holding half a hello cannot lock honest ones
// out. A connection Scale moved stays on its old loop's list, which
// drops it when it comes to it.
type helloList struct {
	head, tail *Conn
}

func (h *helloList) add(l *Loop, c *Conn, t *tlsState) {
	if t.helloLoop != nil {
		return
	}
	t.helloLoop, t.helloPrev, t.helloNext = l, h.tail, nil
	if h.tail != nil {
		h.tail.rare.tls.helloNext = c
	} else {
		h.head = c
	}
	h.tail = c
}

// remove takes c off l's list, if it is on it.
func (h *helloList) remove(l *Loop, c *Conn, t *tlsState) {
	if t.helloLoop != l {
		return
	}
	h.unlink(t)
	t.helloLoop, t.helloPrev, t.helloNext = nil, nil, nil
}

// unlink takes t's connection out of the chain, writing only its
// neighbours and the ends: t may be a connection Scale moved away.
func (h *helloList) unlink(t *tlsState) {
	if t.helloPrev != nil {
		t.helloPrev.rare.tls.helloNext = t.helloNext
	} else {
		h.head = t.helloNext
	}
	if t.helloNext != nil {
		t.helloNext.rare.tls.helloPrev = t.helloPrev
	} else {
		h.tail = t.helloPrev
	}
}

// evict closes the oldest connections on the list, other than c, until
// the budget has need bytes more or none is left; it reports whether it
// closed any.
func (h *helloList) evict(l *Loop, c *Conn, need int) bool {
	evicted := false
	goal := l.w.hsInput.Load() - int64(need)
	for e := h.head; e != nil && l.w.hsInput.Load() > goal; {
		t := e.rare.tls
		next := t.helloNext
		switch {
		case e.loop.Load() != l:
			h.unlink(t) // moved away: not this loop's to close
		case e != c:
			l.refuseTLS(e, fmt.Errorf("herd: TLS: evicted with its ClientHello unfinished, the worker's budget of %d bytes spent", handshakeBudget))
			evicted = true
		}
		e = next
	}
	return evicted
}

// handshakePeerEnded takes the peer's end of stream during a handshake:
// what came before it is still the handshake's (a client may send its
// last flight, a request and its end at once), and then, once the
// handshake is over, the application's. Before the first record is
// whole, there will be no handshake.
func (l *Loop) handshakePeerEnded(c *Conn, t *tlsState) {
	if !t.admitted {
		l.closeConn(c, nil) // and counted
		return
	}
	c.mu.Lock()
	c.flags.Or(flagPeerEnded)
	c.updateInterestLocked()
	c.mu.Unlock()
	t.pipe.mu.Lock()
	t.pipe.ended = true
	t.pipe.mu.Unlock()
	t.pipe.fed.Signal()
}

// resumeHandshakeInput reads a connection again once its handshake has
// taken some of what it held at its limit.
func (l *Loop) resumeHandshakeInput(c *Conn) {
	c.mu.Lock()
	c.flags.And(^flagHandshakeFull)
	c.updateInterestLocked()
	c.mu.Unlock()
}

// handshakeDone runs on the connection's loop once its handshake ended.
func (l *Loop) handshakeDone(c *Conn, err error) {
	t := c.tlsOf()
	if err != nil {
		// Counted even when the connection closed first (its peer gave
		// up, which is what ended the handshake).
		l.tlsFailed.Add(1)
		l.w.logger().Debug("herd: TLS handshake failed", "conn", c.id, "remote", c.RemoteAddr(), "err", err)
		l.closeConn(c, nil) // no OnConnect ran: no OnClose either (flagHandshaking)
		return
	}
	if c.state.Load() == connClosed {
		l.tlsFailed.Add(1) // done, but its peer was gone first
		return
	}
	l.tlsHandshakes.Add(1)
	t.pipe.endHandshake()
	if c.flags.Load()&flagHandshakeFull != 0 {
		l.resumeHandshakeInput(c)
	}
	c.flags.And(^flagHandshaking)
	if l.w.OnConnect != nil {
		l.callConn(l.w.OnConnect, c)
	}
	l.readTLS(c, t) // what came after the handshake's last message
}

// feedTLS takes ciphertext the loop read: before the handshake is
// queued, it is looked at for admission; during the handshake it waits
// for the handshake's goroutine; after, it is decrypted and delivered.
func (l *Loop) feedTLS(c *Conn, t *tlsState, data []byte) {
	t.pipe.feed(data)
	switch {
	case c.flags.Load()&flagHandshaking == 0:
		l.readTLS(c, t)
		t.pipe.keep()
	case !t.admitted:
		l.admitTLS(c, t)
	}
}

// readTLS decrypts what the pipe holds and delivers the plaintext, until
// crypto/tls needs more. The peer's close_notify is its end of stream.
func (l *Loop) readTLS(c *Conn, t *tlsState) {
	if l.plainBuf == nil {
		// Made on first use: on the loop that accepted the connection,
		// or on the one Scale moved it to. (Moved to a loop that had
		// none, it was read into an empty buffer: crypto/tls returned 0
		// bytes and no error, for ever.)
		l.plainBuf = make([]byte, readBufferSize)
	}
	for c.readable() {
		n, err := t.conn.Read(l.plainBuf)
		if n > 0 {
			l.deliver(c, l.plainBuf[:n])
		}
		switch {
		case err == nil:
		case errors.Is(err, errWouldBlock):
			return
		case errors.Is(err, io.EOF):
			l.peerEnded(c)
			return
		default:
			l.tlsFailed.Add(1)
			t.pipe.flushBatch() // an alert crypto/tls wrote into a Send's batch goes before the close
			l.closeConn(c, err)
			return
		}
	}
}

// closeNotify sends the TLS close_notify alert, once, before a graceful
// close half-closes the socket.
func (c *Conn) closeNotify() {
	if t := c.tlsOf(); t != nil && c.flags.Load()&flagHandshaking == 0 && c.state.Load() == connOpen {
		t.conn.CloseWrite()
		// A Send on another goroutine may have gathered records that the
		// alert joined: they go now, while the connection still takes
		// writes, not at its flush, which the close would refuse.
		t.pipe.flushBatch()
	}
}

// sendTLS encrypts data into the send queue. A Send that finds the queue
// full is dropped here, as plaintext, before anything is encrypted, so
// the TLS stream never skips a record.
func (c *Conn) sendTLS(t *tlsState, data []byte, mode sendMode) (SendResult, bool) {
	l := c.loop.Load()
	if c.state.Load() != connOpen || c.flags.Load()&flagHandshaking != 0 {
		l.dropped.Add(1)
		return Dropped, false
	}
	if max := l.w.maxSend; mode == sendDroppable && max > 0 && c.SendQueueBytes() >= max {
		c.droppedFull(l)
		return Dropped, true
	}
	if err := t.pipe.encrypt(t.conn, data); err != nil {
		l.dropped.Add(1)
		return Dropped, false
	}
	if c.SendQueueBytes() > 0 {
		return Queued, true
	}
	return Written, true
}

func (w *Worker) handshakeTimeout() time.Duration {
	if w.HandshakeTimeout > 0 {
		return w.HandshakeTimeout
	}
	return DefaultHandshakeTimeout
}

// handshaker runs TLS handshakes on goroutines that exist only while
// there is work (a burst leaves none behind). At most max of them hold a
// slot: they compute. One whose handshake waits for its client's next
// flight gives its slot up (park) and takes one again when input has
// come (unpark), before any new handshake starts.
type handshaker struct {
	mu       sync.Mutex
	slot     sync.Cond // signalled when a slot frees while a handshake waits to resume
	max      int
	running  int // goroutines holding a slot
	parked   int // handshakes waiting for their client
	resuming int // parked handshakes whose input came, waiting for a slot
	jobs     []handshakeJob
}

type handshakeJob struct {
	c *Conn
	t *tlsState
}

func (w *Worker) handshakes() *handshaker {
	w.hsOnce.Do(func() {
		n := w.MaxHandshakes
		if n <= 0 {
			n = DefaultMaxHandshakes
		}
		w.hs = &handshaker{max: n}
		w.hs.slot.L = &w.hs.mu
	})
	return w.hs
}

func (h *handshaker) queue(c *Conn, t *tlsState) {
	h.mu.Lock()
	h.jobs = append(h.jobs, handshakeJob{c, t})
	start := h.running+h.resuming < h.max // resuming handshakes come first
	if start {
		h.running++
	}
	h.mu.Unlock()
	if start {
		go h.run()
	}
}

// release gives a slot back: to a handshake waiting to resume, or to a
// new goroutine for the queued ones; under mu.
func (h *handshaker) releaseLocked() {
	h.running--
	switch {
	case h.resuming > 0:
		h.slot.Signal()
	case len(h.jobs) > 0:
		h.running++
		go h.run()
	}
}

func (h *handshaker) park() {
	h.mu.Lock()
	h.parked++
	h.releaseLocked()
	h.mu.Unlock()
}

func (h *handshaker) unpark() {
	h.mu.Lock()
	h.parked--
	h.resuming++
	for h.running >= h.max {
		h.slot.Wait()
	}
	h.resuming--
	h.running++
	h.mu.Unlock()
}

func (h *handshaker) run() {
	for {
		h.mu.Lock()
		if len(h.jobs) == 0 || h.resuming > 0 {
			// Nothing queued, or the slot is owed to a handshake that
			// waits to resume: this goroutine ends.
			if len(h.jobs) == 0 {
				h.jobs = nil // let a burst's backing array go
			}
			h.running--
			if h.resuming > 0 {
				h.slot.Signal()
			}
			h.mu.Unlock()
			return
		}
		j := h.jobs[0]
		h.jobs[0] = handshakeJob{}
		h.jobs = h.jobs[1:]
		h.mu.Unlock()
		j.t.pipe.start()
		err := j.t.conn.Handshake()
		j.t.timer.Stop()
		if j.t.expired.Load() {
			err = fmt.Errorf("herd: TLS handshake: %w", context.DeadlineExceeded)
		}
		c := j.c
		c.Post(func() { c.loop.Load().handshakeDone(c, err) })
	}
}
