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

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"
)

// Defaults for zero-valued TLS fields of a Worker.
const (
	DefaultHandshakeTimeout = 10 * time.Second
	DefaultMaxHandshakes    = 256
)

// tlsState is a TLS connection's part of its Conn (in connRare).
type tlsState struct {
	conn     *tls.Conn
	pipe     tlsPipe
	deadline time.Time // the handshake's, from the accept
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
	closed bool
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
		case p.closed:
			return 0, io.EOF
		case !p.block:
			return 0, errWouldBlock
		}
		p.fed.Wait()
	}
	n := copy(b, p.in[p.off:])
	p.off += n
	if p.off == len(p.in) {
		// All read: an idle connection keeps no buffer here.
		p.in, p.off, p.lent = nil, 0, false
	}
	return n, nil
}

func (p *tlsPipe) Write(b []byte) (int, error) {
	if _, ok := p.c.sendBytes(b, sendOwed); !ok {
		return 0, ErrConnClosed
	}
	return len(b), nil
}

// feed adds ciphertext read from the socket. After the handshake, when
// nothing is left over, b (the loop's read buffer) is lent rather than
// copied: crypto/tls reads it on the loop at once, and keep copies what
// it leaves.
func (p *tlsPipe) feed(b []byte) {
	p.mu.Lock()
	if !p.block && p.off == len(p.in) {
		p.in, p.off, p.lent = b, 0, true
	} else {
		p.in = append(p.in, b...)
	}
	p.mu.Unlock()
	p.fed.Signal()
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
// certificates), or nil when it is not a TLS connection. It is complete
// from OnConnect on.
func (c *Conn) TLS() *tls.ConnectionState {
	t := c.tlsOf()
	if t == nil {
		return nil
	}
	st := t.conn.ConnectionState()
	return &st
}

// startTLS makes an accepted connection a TLS one and queues its
// handshake; OnConnect runs once it is done. On the loop.
func (l *Loop) startTLS(c *Conn) {
	t := &tlsState{deadline: l.now.Add(l.w.handshakeTimeout())}
	t.pipe = tlsPipe{c: c, block: true}
	t.pipe.fed.L = &t.pipe.mu
	t.conn = tls.Server(&t.pipe, l.w.TLS)
	c.mu.Lock()
	c.rareLocked().tls = t
	c.mu.Unlock()
	c.flags.Or(flagTLS | flagHandshaking)
	l.w.handshakes().queue(c, t)
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
		return
	}
	l.tlsHandshakes.Add(1)
	t.pipe.mu.Lock()
	t.pipe.block = false
	t.pipe.mu.Unlock()
	c.flags.And(^flagHandshaking)
	if l.w.OnConnect != nil {
		l.callConn(l.w.OnConnect, c)
	}
	l.readTLS(c, t) // what came after the handshake's last message
}

// feedTLS takes ciphertext the loop read: during the handshake it waits
// for the handshake's goroutine; after, it is decrypted and delivered.
func (l *Loop) feedTLS(c *Conn, t *tlsState, data []byte) {
	t.pipe.feed(data)
	if c.flags.Load()&flagHandshaking == 0 {
		l.readTLS(c, t)
		t.pipe.keep()
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
	if _, err := t.conn.Write(data); err != nil {
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

// handshaker runs TLS handshakes on at most max goroutines, which exist
// only while there is work: a burst of handshakes leaves none behind.
type handshaker struct {
	mu      sync.Mutex
	max     int
	running int
	jobs    []handshakeJob
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
	})
	return w.hs
}

func (h *handshaker) queue(c *Conn, t *tlsState) {
	h.mu.Lock()
	h.jobs = append(h.jobs, handshakeJob{c, t})
	start := h.running < h.max
	if start {
		h.running++
	}
	h.mu.Unlock()
	if start {
		go h.run()
	}
}

func (h *handshaker) run() {
	for {
		h.mu.Lock()
		if len(h.jobs) == 0 {
			h.running--
			h.jobs = nil // let a burst's backing array go
			h.mu.Unlock()
			return
		}
		j := h.jobs[0]
		h.jobs[0] = handshakeJob{}
		h.jobs = h.jobs[1:]
		h.mu.Unlock()
		// The deadline closes the pipe, which ends the handshake's read: no
		// context, and so no watcher goroutine, per handshake.
		timer := time.AfterFunc(time.Until(j.t.deadline), func() { j.t.pipe.Close() })
		err := j.t.conn.Handshake()
		if !timer.Stop() {
			err = fmt.Errorf("herd: TLS handshake: %w", context.DeadlineExceeded)
		}
		c := j.c
		c.Post(func() { c.loop.Load().handshakeDone(c, err) })
	}
}
