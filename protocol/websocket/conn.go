package websocket

import (
	"encoding/binary"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/seed358e4494/herd"
	"github.com/seed358e4494/herd/internal/bufpool"
)

// Errors returned by Conn's write methods. Test for them with errors.Is.
var (
	// ErrClosed: a close frame has been sent (by Close, or in answer to
	// the peer's) or the connection is closed; no more messages go out.
	ErrClosed = errors.New("websocket: connection closed")
	// ErrSlowConsumer: a message pushed to a connection whose send queue
	// is over the Server's MaxQueuedBytes was not sent, and the connection
	// is being closed with StatusPolicyViolation (see MaxQueuedBytes).
	ErrSlowConsumer = errors.New("websocket: slow consumer: send queue over MaxQueuedBytes; closing")
	// ErrControlTooLong: a ping or close payload over 125 bytes.
	ErrControlTooLong = errors.New("websocket: control frame payload over 125 bytes")
	// ErrInvalidCode: a status code that may not be sent in a close frame.
	ErrInvalidCode = errors.New("websocket: status code not valid in a close frame")
	// ErrDataOpCode: a message opcode other than OpText or OpBinary.
	ErrDataOpCode = errors.New("websocket: message opcode must be OpText or OpBinary")
)

// link is the connection as a Conn uses it: a *herd.Conn (a fake in the
// package's tests, which run the parser and the writer without a network).
type link interface {
	Write(b []byte) (int, error)
	SendQueueBytes() int
	Close()
	CloseNoWait()
	Abort()
	Post(f func()) bool // on the connection's loop, wherever Scale moved it
}

// loopLink is the connection's loop as a Conn uses it: a *herd.Loop (a
// fake in tests).
type loopLink interface {
	AfterFunc(d time.Duration, f func()) *herd.Timer
	Every(d time.Duration, f func()) *herd.Timer
}

// Conn is one WebSocket connection. Its callbacks (the Server's OnOpen,
// OnMessage, OnClose) run on the loop of its herd.Conn and must not block.
// Every method is safe from any goroutine; each frame goes out whole, in one
// write, so frames written concurrently never interleave.
type Conn struct {
	srv *Server
	c   link
	// loop is written under wmu (joinLoop, after Scale moved the
	// connection) and read under wmu or on the loop.
	loop        loopLink
	subprotocol string

	// Owned by the loop.
	p          parser
	rx         uint64 // reads so far
	rxSeen     uint64 // rx at the last keepalive tick that saw input
	lastRx     time.Time
	keepalive  *herd.Timer
	gotClose   bool // the peer's close frame arrived
	peerCode   StatusCode
	peerReason string
	failCode   StatusCode // we failed the connection with this code
	failReason string

	started    atomic.Bool // the 101 response has gone out (set under wmu)
	closeSent  atomic.Bool // a close frame has been sent (set under wmu)
	delivering atomic.Bool // the loop is delivering this connection's input: writes are replies

	wmu        sync.Mutex // serialises frames (and compression, in order)
	pending    []byte     // frames written before the 101 went out
	closed     bool
	closeTimer *herd.Timer
	defl       *deflater // nil without permessage-deflate
	ctx        any
}

// Herd returns the underlying herd connection (remote address, ID, loop,
// PauseRecv). Writing to it directly would corrupt the WebSocket stream.
func (c *Conn) Herd() *herd.Conn {
	hc, _ := c.c.(*herd.Conn)
	return hc
}

// Subprotocol is the subprotocol agreed in the handshake, or "".
func (c *Conn) Subprotocol() string { return c.subprotocol }

// Compressed reports whether permessage-deflate was negotiated.
func (c *Conn) Compressed() bool { return c.p.inflate != nil }

// Context returns the value stored by SetContext.
func (c *Conn) Context() any {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.ctx
}

// SetContext stores one value of the application's with the connection.
func (c *Conn) SetContext(v any) {
	c.wmu.Lock()
	c.ctx = v
	c.wmu.Unlock()
}

// WriteText sends data as one text message. data must be valid UTF-8 (it
// is not checked). data is not kept after WriteText returns.
func (c *Conn) WriteText(data []byte) error { return c.write(OpText, data) }

// WriteBinary sends data as one binary message.
func (c *Conn) WriteBinary(data []byte) error { return c.write(OpBinary, data) }

// WriteMessage sends data as one message of type op (OpText or OpBinary).
func (c *Conn) WriteMessage(op OpCode, data []byte) error {
	if op != OpText && op != OpBinary {
		return ErrDataOpCode
	}
	return c.write(op, data)
}

// Ping sends a ping with payload (at most 125 bytes). The peer's pong is
// not reported; any input counts as a sign of life for PongTimeout.
func (c *Conn) Ping(payload []byte) error {
	if len(payload) > maxControlPayloadLen {
		return ErrControlTooLong
	}
	return c.write(OpPing, payload)
}

// Close starts the closing handshake: it sends a close frame with code and
// reason (at most 123 bytes) and returns. Messages that arrive afterwards
// are not delivered. herd closes the TCP connection once the peer has
// answered with its own close frame, or after the Server's CloseTimeout if
// it does not; OnClose runs then. Close does not wait.
func (c *Conn) Close(code StatusCode, reason string) error {
	if !code.Valid() {
		return ErrInvalidCode
	}
	if len(reason) > maxControlPayloadLen-2 {
		return ErrControlTooLong
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.closeSent.Load() || c.closed {
		return ErrClosed
	}
	err := c.sendCloseLocked(code, reason)
	c.closeTimer = c.loop.AfterFunc(c.srv.closeTimeout(), c.c.Abort)
	return err
}

func (c *Conn) write(op OpCode, data []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if err := c.admitLocked(); err != nil {
		return err
	}
	return c.writeLocked(op, data)
}

// admitLocked decides whether a message may be queued: not once a close
// frame has gone out (ErrClosed). A reply, written
// while the loop delivers this connection's input (from OnMessage, or a
// pong), always is: the core stops reading the connection while its queue
// is high, so a peer that sends faster than it reads is slowed down. A
// message pushed from elsewhere (another goroutine, a timer, a broadcast)
// to a connection whose queue is over MaxQueuedBytes is not: the peer is a
// slow consumer, and the connection is closed before anything of the
// message is encoded (so a compressed stream never skips a frame).
func (c *Conn) admitLocked() error {
	if c.closeSent.Load() || c.closed {
		return ErrClosed
	}
	limit := c.srv.maxQueued()
	if limit < 0 || c.delivering.Load() || !c.started.Load() || c.c.SendQueueBytes() < limit {
		return nil
	}
	c.srv.slowConsumers.Add(1)
	c.sendCloseLocked(StatusPolicyViolation, slowConsumerReason)
	// The rest runs on the loop, which owns failCode (and this goroutine
	// holds wmu, which closeTransport takes).
	c.c.Post(func() {
		if c.failCode == 0 && !c.gotClose {
			c.failCode, c.failReason = StatusPolicyViolation, slowConsumerReason
		}
		c.closeTransport(false)
	})
	return ErrSlowConsumer
}

const slowConsumerReason = "slow consumer"

// writeLocked encodes one frame into a pooled buffer and sends it in one
// SendRaw call. A compressed payload is written after room for the longest
// header, and the header is put right before it once its length is known.
func (c *Conn) writeLocked(op OpCode, data []byte) error {
	buf := bufpool.Get(maxServerHeaderLen + len(data))
	var frame []byte
	if c.defl != nil && !op.IsControl() && len(data) >= minCompressSize {
		buf = c.defl.compress(buf[:maxServerHeaderLen], data)
		n := len(buf) - maxServerHeaderLen
		frame = buf[maxServerHeaderLen-serverHeaderLen(n):]
		putHeader(frame, true, true, op, n)
	} else {
		buf = appendFrame(buf, false, op, data)
		frame = buf
	}
	err := c.sendLocked(frame)
	bufpool.Put(buf)
	return err
}

// sendLocked sends an encoded frame, or keeps it until the 101 response
// has gone out. The frame is never dropped: it is queued, or the
// connection is closing and nothing more goes out (ErrClosed).
func (c *Conn) sendLocked(frame []byte) error {
	if !c.started.Load() {
		c.pending = append(c.pending, frame...)
		return nil
	}
	if _, err := c.c.Write(frame); err != nil {
		return ErrClosed
	}
	return nil
}

// sendCloseLocked sends a close frame; code 0 sends one without a code.
func (c *Conn) sendCloseLocked(code StatusCode, reason string) error {
	c.closeSent.Store(true)
	var b [maxServerHeaderLen + maxControlPayloadLen]byte
	p := b[2:2]
	if code != 0 {
		p = binary.BigEndian.AppendUint16(p, uint16(code))
		p = append(p, reason...)
	}
	b[0] = finBit | byte(OpClose)
	b[1] = byte(len(p))
	return c.sendLocked(b[:2+len(p)])
}

// start marks the 101 response as sent and sends what was written before.
func (c *Conn) start() {
	c.wmu.Lock()
	c.startLocked()
	c.wmu.Unlock()
}

func (c *Conn) startLocked() {
	if c.started.Load() {
		return
	}
	c.started.Store(true)
	if len(c.pending) > 0 && !c.closed {
		c.c.Write(c.pending)
	}
	c.pending = nil
}

// closeTransport closes the TCP connection once what was sent is flushed.
// peerDone: the peer's close frame has arrived, after which it sends
// nothing (RFC 6455, 5.5.1), so the close need not linger for its end of
// stream.
func (c *Conn) closeTransport(peerDone bool) {
	c.wmu.Lock()
	c.startLocked()
	c.wmu.Unlock()
	if peerDone {
		c.c.CloseNoWait()
	} else {
		c.c.Close()
	}
}

// stream is the herdhttp.StreamStarter through which the HTTP server hands
// a connection to its Conn after the 101, so that Conn exports no
// lifecycle methods an application could call by mistake.
type stream struct{ c *Conn }

// OnStart: the 101 response has been handed to the connection, so the
// frames written before it can follow. On the loop.
func (s stream) OnStart(*herd.Conn)               { s.c.start() }
func (s stream) OnData(_ *herd.Conn, data []byte) { s.c.onData(data) }
func (s stream) OnClose(*herd.Conn)               { s.c.onClosed() }

// Stop implements herd.Stopper: the worker stops gracefully, and the peer
// is told so with a close frame 1001 (Going Away); the closing handshake
// (bounded by the Server's CloseTimeout) ends the connection.
func (s stream) Stop(*herd.Conn) {
	if s.c.Close(StatusGoingAway, "server going away") != nil {
		s.c.c.Close() // a close was sent already, or the 101 is not out
	}
}

// LeaveLoop and JoinLoop implement herd.LoopMover: Worker.Scale hands the
// connection to another loop, and its timers go along.
func (s stream) LeaveLoop(*herd.Conn)   { s.c.leaveLoop() }
func (s stream) JoinLoop(hc *herd.Conn) { s.c.joinLoop(hc.Loop()) }

// leaveLoop stops the connection's timers on the loop it leaves; joinLoop
// sets them again on the new one (a pending close handshake gets its whole
// timeout again). The timer fields stay set, as marks, in between.
func (c *Conn) leaveLoop() {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.keepalive != nil {
		c.keepalive.Stop()
	}
	if c.closeTimer != nil {
		c.closeTimer.Stop()
	}
}

func (c *Conn) joinLoop(l loopLink) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.loop = l
	if c.keepalive != nil {
		c.keepalive = l.Every(c.srv.keepalivePeriod(), c.tick)
	}
	if c.closeTimer != nil {
		c.closeTimer = l.AfterFunc(c.srv.closeTimeout(), c.c.Abort)
	}
}

// onData parses what the client sent. On the loop.
func (c *Conn) onData(data []byte) {
	if !c.started.Load() {
		// Input reaches the stream only after the response went out.
		c.start()
	}
	c.rx++
	c.delivering.Store(true)
	err := c.p.feed(data, c)
	c.delivering.Store(false)
	if err != nil {
		c.fail(err)
	}
}

// onClosed runs once the TCP connection has closed: it runs the Server's
// OnClose with the close code: the peer's (1005 if its close frame had
// none), the one the server failed the connection with, or 1006 if the
// connection ended without a close frame.
func (c *Conn) onClosed() {
	c.wmu.Lock()
	c.closed = true
	c.pending = nil
	if c.closeTimer != nil {
		c.closeTimer.Stop()
	}
	if d := c.defl; d != nil && d.w != nil {
		// The context dies with the connection; the writer can serve others.
		flateWriters[d.level-minLevel].Put(d.w)
		d.w = nil
	}
	c.wmu.Unlock()
	if c.keepalive != nil {
		c.keepalive.Stop()
	}
	c.p.release()
	if c.p.inflate != nil {
		c.p.inflate.window = nil
	}
	code, reason := StatusAbnormalClosure, ""
	switch {
	case c.gotClose:
		code, reason = c.peerCode, c.peerReason
	case c.failCode != 0:
		code, reason = c.failCode, c.failReason
	}
	if c.srv.OnClose != nil {
		c.srv.OnClose(c, code, reason)
	}
}

// fail fails the connection after a protocol violation: a close frame
// with the violation's code, then the TCP close.
func (c *Conn) fail(err *closeErr) {
	if c.failCode == 0 && !c.gotClose {
		c.failCode, c.failReason = err.code, err.reason
	}
	c.wmu.Lock()
	if !c.closeSent.Load() && !c.closed {
		c.sendCloseLocked(err.code, err.reason)
	}
	c.wmu.Unlock()
	c.closeTransport(false)
}

// The frameHandler methods, called by the parser on the loop.

func (c *Conn) onMessage(op OpCode, data []byte) bool {
	if c.closeSent.Load() {
		return true // closing: the application has said its last word
	}
	if c.srv.OnMessage != nil {
		c.srv.OnMessage(c, op, data)
	}
	return true
}

func (c *Conn) onPing(payload []byte) bool {
	c.write(OpPong, payload) // ErrClosed once closing: no pong then
	return true
}

func (c *Conn) onPong([]byte) bool { return true }

func (c *Conn) onClose(code StatusCode, reason []byte) bool {
	c.gotClose = true
	c.peerCode, c.peerReason = code, string(reason)
	c.wmu.Lock()
	if !c.closeSent.Load() && !c.closed {
		// Echo the peer's code (none if it sent none).
		if code == StatusNoStatusReceived {
			code = 0
		}
		c.sendCloseLocked(code, "")
	}
	c.wmu.Unlock()
	// Either the peer answered our close, or we answered its: the
	// handshake is complete and the server closes the TCP connection first.
	c.closeTransport(true)
	return false
}

// tick runs on the loop every keepalive period: it closes a peer silent
// for longer than PongTimeout and pings the others.
func (c *Conn) tick() {
	now := time.Now()
	if c.rx != c.rxSeen {
		c.rxSeen, c.lastRx = c.rx, now
	}
	if t := c.srv.PongTimeout; t > 0 && now.Sub(c.lastRx) > t {
		c.c.Abort()
		return
	}
	if c.srv.PingInterval > 0 {
		c.write(OpPing, nil)
	}
}
