package herdhttp

import (
	"context"
	"errors"
	nethttp "net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/seed358e4494/herd"
	"github.com/seed358e4494/herd/internal/bufpool"
)

// Errors returned by ResponseWriter methods.
var (
	// ErrBodyNotAllowed is returned by Write for a status that has no body
	// (1xx, 204, 304).
	ErrBodyNotAllowed = errors.New("http: request method or response status code does not allow body")
	// ErrClosed is returned by Write and Flush once the connection has
	// closed: the response can no longer be delivered.
	ErrClosed = errors.New("http: connection closed")
	// ErrContentLength is returned by Write when the body would exceed the
	// Content-Length the handler set; nothing of that Write is sent, and
	// the connection closes after the response.
	ErrContentLength = errors.New("http: wrote more than the declared Content-Length")
)

// Stream receives a connection's bytes after an upgrade.
type Stream interface {
	OnData(c *herd.Conn, data []byte) // data valid only during the call
	OnClose(c *herd.Conn)
}

// StreamStarter is a Stream that learns when it takes over the connection:
// OnStart runs on the loop once the 101 response has been handed to the
// connection (after the responses to earlier pipelined requests), before
// the first OnData. Bytes the Stream sends from then on follow the 101; a
// Stream whose bytes may be written earlier (from the handler, or another
// goroutine) should hold them until OnStart. If the connection closes
// before the 101 goes out, only OnClose runs.
type StreamStarter interface {
	Stream
	OnStart(c *herd.Conn)
}

// flushThreshold is how much body a response buffers before it starts
// streaming on its own (chunked, or close-delimited for HTTP/1.0).
const flushThreshold = 64 << 10

// ResponseWriter builds the response to one request. The handler that
// receives it owns it on the loop; after Async, the goroutine that finishes
// it owns it (one goroutine at a time). It must not be used after End, nor
// after a synchronous handler has returned.
//
// The body is buffered and sent when the handler returns (or at End), with
// a Content-Length computed then. Flush sends what is there and switches to
// streaming: Transfer-Encoding: chunked for HTTP/1.1, close-delimited for
// HTTP/1.0 (unless the handler set Content-Length). A body over 64 KiB
// starts streaming on its own.
type ResponseWriter struct {
	cs *conn

	// Owned by the handler (or its async goroutine).
	status      int
	wroteHeader bool
	hdr         []byte // "Name: value\r\n" lines
	body        []byte
	clen        int64 // Content-Length set by the handler, or -1
	headBytes   int64 // body bytes written in answer to HEAD
	written     int64 // body bytes sent while streaming
	head        bool  // answering HEAD
	http10      bool
	keepAlive10 bool
	closeAfter  bool
	userDate    bool
	userConn    bool
	onClose     func() // run if the connection closes first (Bridge)

	// Under cs.mu.
	out        []byte // encoded, waiting for earlier responses
	headerSent bool
	chunked    bool
	async      bool
	returned   bool // the handler has returned: after Async, Flush may wait
	panicked   bool // the handler panicked after Async: End only drops its reference
	ended      bool
	finished   bool
	interim    bool // a 100 Continue
	queued     bool
	refs       int
	upgrade    Stream
	hold       *herd.Hold // from Async to End
}

var rwPool = sync.Pool{New: func() any { return new(ResponseWriter) }}

// newResponse makes the response for r (nil for one the server makes on
// its own) and puts it in line.
func (cs *conn) newResponse(r *Request) *ResponseWriter {
	cs.mu.Lock()
	w := cs.spare
	if w != nil {
		cs.spare = nil
	} else {
		w = rwPool.Get().(*ResponseWriter)
	}
	w.cs = cs
	w.status = 200
	w.clen = -1
	if r != nil {
		w.head = string(r.Method()) == "HEAD"
		w.http10 = r.minor == 0
		w.keepAlive10 = r.keepAlive
		w.closeAfter = r.wantClose
	} else {
		w.http10 = cs.p.reqLine && cs.p.minor == 0
	}
	w.refs = 2 // the creator's and the queue's
	if !cs.closed.Load() {
		w.queued = true
		cs.queue = append(cs.queue, w)
		if len(cs.queue) >= cs.lim.maxInFlight && !cs.held.Load() {
			cs.held.Store(true)
			cs.c.PauseRecv()
		}
	} else {
		w.refs = 1
	}
	cs.mu.Unlock()
	return w
}

// releaseLocked drops one reference; the last one recycles w.
func (cs *conn) releaseLocked(w *ResponseWriter) {
	w.refs--
	if w.refs > 0 {
		return
	}
	hdr, body, out := w.hdr[:0], w.body[:0], w.out[:0]
	if cap(hdr) > bufpool.MaxPooled {
		hdr = nil
	}
	if cap(body) > bufpool.MaxPooled {
		body = nil
	}
	if cap(out) > bufpool.MaxPooled {
		out = nil
	}
	*w = ResponseWriter{hdr: hdr, body: body, out: out}
	if cs.batching && cs.spare == nil {
		cs.spare = w // for the next request of the read; endBatch pools it
		return
	}
	rwPool.Put(w)
}

// finishLocked ends w: what is left of it is encoded, and sent if earlier
// responses are out.
func (cs *conn) finishLocked(w *ResponseWriter) {
	if w.finished {
		return
	}
	w.finished = true
	w.ended = true
	if !w.queued {
		return
	}
	dst := cs.target(w, len(w.body)+512)
	switch {
	case w.interim:
		*dst = append(*dst, "HTTP/1.1 100 Continue\r\n\r\n"...)
	case !w.headerSent:
		*dst = w.appendHead(*dst, true)
		if w.head || bodyless(w.status) {
			break
		}
		cs.put(dst, w.capBody(w.body))
	default:
		w.putBody(dst, nil)
		if w.chunked && !w.head && !bodyless(w.status) {
			*dst = append(*dst, "0\r\n\r\n"...)
		}
		if w.clen >= 0 && w.written != w.clen && !w.head {
			w.closeAfter = true // the body did not match its length
		}
	}
	w.body = w.body[:0]
	cs.pumpLocked()
}

// target is where w's next bytes (about size of them) go: straight into
// the batch when w is first in line, else into w's own buffer until it is.
func (cs *conn) target(w *ResponseWriter, size int) *[]byte {
	if cs.batching && len(cs.queue) > 0 && cs.queue[0] == w && len(w.out) == 0 {
		if cs.wbuf == nil {
			cs.wbuf = bufpool.Get(min(size, bufpool.MaxPooled))
		}
		return &cs.wbuf
	}
	return &w.out
}

// pumpLocked sends what the responses at the head of the line have ready,
// in order, and retires the finished ones.
func (cs *conn) pumpLocked() {
	for len(cs.queue) > 0 {
		w := cs.queue[0]
		if len(w.out) > 0 {
			cs.writeLocked(w.out)
			w.out = w.out[:0]
		}
		if !w.finished {
			break
		}
		n := copy(cs.queue, cs.queue[1:])
		cs.queue[n] = nil
		cs.queue = cs.queue[:n]
		w.queued = false
		cs.wakeWaitersLocked()
		if w.closeAfter || cs.closed.Load() {
			// Nothing after this response is answered.
			cs.closeLocked()
			cs.releaseLocked(w)
			return
		}
		if w.upgrade != nil {
			s := w.upgrade
			if cs.batching {
				cs.upgradeDone = s
			} else {
				cs.c.Post(func() { cs.switchStream(s) })
			}
		}
		cs.releaseLocked(w)
	}
	if len(cs.queue) == 0 {
		if cs.batching {
			cs.idleFrom = cs.batchNow
		} else {
			cs.idleFrom = nowNano()
		}
	}
	if cs.held.Load() && len(cs.queue) <= cs.lim.maxInFlight/2 && !cs.closed.Load() {
		cs.held.Store(false)
		cs.c.Post(cs.resume)
	}
}

// closeLocked sends what is batched, then closes the connection once its
// send queue is written out. The responses still in line are dropped.
func (cs *conn) closeLocked() {
	if len(cs.wbuf) > 0 && !cs.closed.Load() {
		cs.c.Write(cs.wbuf)
		cs.wbuf = cs.wbuf[:0]
	}
	cs.closed.Store(true)
	if cs.peerDone {
		// By HTTP the client sends nothing after a Connection: close
		// request, so waiting for its end of stream buys nothing.
		cs.c.CloseNoWait()
	} else {
		cs.c.Close()
	}
	rest := cs.queue
	cs.queue = nil
	for _, w := range rest {
		w.queued = false
		cs.releaseLocked(w)
	}
	clear(rest)
	cs.wakeWaitersLocked()
}

// wakeWaitersLocked wakes the producers in waitTurn.
func (cs *conn) wakeWaitersLocked() {
	if cs.moved != nil {
		close(cs.moved)
		cs.moved = nil
	}
}

// waitTurn makes a producer on another goroutine (after Async) wait for
// its connection, as net/http's Write blocks: first, while w holds
// flushThreshold or more behind an unfinished response, until it is first
// in line, so that it holds about that much rather than its whole body;
// then until the connection's send queue is below its high mark, so that a
// slow client makes the producer wait rather than the server buffer. It
// returns ErrClosed if the connection closes meanwhile.
func (cs *conn) waitTurn(w *ResponseWriter) error {
	for {
		cs.mu.Lock()
		if cs.closed.Load() {
			cs.mu.Unlock()
			return ErrClosed
		}
		if !w.queued || cs.queue[0] == w || len(w.out) < flushThreshold {
			cs.mu.Unlock()
			break
		}
		if cs.moved == nil {
			cs.moved = make(chan struct{})
		}
		ch := cs.moved
		cs.mu.Unlock()
		<-ch
	}
	if err := cs.c.WaitWritable(context.Background()); err != nil {
		return ErrClosed
	}
	return nil
}

// writeLocked sends b in its turn.
func (cs *conn) writeLocked(b []byte) {
	if cs.closed.Load() {
		return
	}
	if cs.batching {
		if cs.wbuf == nil {
			cs.wbuf = bufpool.Get(len(b))
		}
		cs.wbuf = append(cs.wbuf, b...)
		if len(cs.wbuf) >= bufpool.MaxPooled {
			cs.flushLocked()
		}
		return
	}
	if _, err := cs.c.Write(b); err != nil {
		cs.closed.Store(true) // the connection is closing already
	}
}

func bodyless(code int) bool { return code < 200 || code == 204 || code == 304 }

// appendHead appends the status line and header section. final: the whole
// body is known (Content-Length); else the response streams.
func (w *ResponseWriter) appendHead(dst []byte, final bool) []byte {
	w.headerSent = true
	switch {
	case w.status == 200 && !w.http10:
		dst = append(dst, "HTTP/1.1 200 OK\r\n"...)
	case w.status == 200:
		dst = append(dst, "HTTP/1.0 200 OK\r\n"...)
	default:
		if w.http10 {
			dst = append(dst, "HTTP/1.0 "...)
		} else {
			dst = append(dst, "HTTP/1.1 "...)
		}
		dst = strconv.AppendInt(dst, int64(w.status), 10)
		dst = append(dst, ' ')
		dst = append(dst, nethttp.StatusText(w.status)...)
		dst = append(dst, "\r\n"...)
	}
	if !w.userDate && w.status >= 200 {
		d := w.cs.batchDate // under cs.mu
		if d == nil {
			d = dateAt(time.Now())
		}
		dst = append(dst, "Date: "...)
		dst = append(dst, d.b[:]...)
		dst = append(dst, "\r\n"...)
	}
	dst = append(dst, w.hdr...)
	if !bodyless(w.status) {
		switch {
		case final && w.head && w.headBytes == 0 && w.clen < 0:
			// A HEAD whose handler wrote no body: the length GET would
			// have is unknown, so none is sent (RFC 9110, 8.6), as
			// net/http does.
		case final:
			n := int64(len(w.body))
			if w.head {
				n = w.headBytes
			}
			if w.clen >= 0 {
				// The handler's length stands. A shorter body then ends
				// the connection: the client sees a short body (an
				// error) rather than waiting for bytes that never come.
				if !w.head && n != w.clen {
					w.closeAfter = true
				}
				n = w.clen
			}
			dst = append(dst, "Content-Length: "...)
			dst = strconv.AppendInt(dst, n, 10)
			dst = append(dst, "\r\n"...)
		case w.clen >= 0:
			dst = append(dst, "Content-Length: "...)
			dst = strconv.AppendInt(dst, w.clen, 10)
			dst = append(dst, "\r\n"...)
		case !w.http10:
			w.chunked = true
			dst = append(dst, "Transfer-Encoding: chunked\r\n"...)
		default:
			w.closeAfter = true // HTTP/1.0: the end of the body is the end of the connection
		}
	}
	switch {
	case w.status == 101 || w.userConn:
	case w.closeAfter:
		dst = append(dst, "Connection: close\r\n"...)
	case w.http10 && w.keepAlive10:
		dst = append(dst, "Connection: keep-alive\r\n"...)
	}
	return append(dst, "\r\n"...)
}

// putBody puts the body buffered so far, then more, into dst (see put),
// as one chunk when chunked.
func (w *ResponseWriter) putBody(dst *[]byte, more []byte) {
	b := w.body
	w.body = w.body[:0]
	if len(b)+len(more) == 0 || w.head || bodyless(w.status) {
		return
	}
	if !w.chunked {
		for _, part := range [2][]byte{b, more} {
			part = w.capBody(part)
			w.written += int64(len(part))
			w.cs.put(dst, part)
		}
		return
	}
	n := len(b) + len(more)
	w.written += int64(n)
	*dst = strconv.AppendInt(*dst, int64(n), 16)
	*dst = append(*dst, "\r\n"...)
	w.cs.put(dst, b)
	w.cs.put(dst, more)
	*dst = append(*dst, "\r\n"...)
}

// put appends b to dst, a response's bytes on their way out. Where dst is
// the batch and b does not fit its pooled buffer, what is batched goes
// and b is written from where it is, rather than the batch grown past
// what the pool keeps (and dropped) for every large response.
func (cs *conn) put(dst *[]byte, b []byte) {
	if dst != &cs.wbuf || len(cs.wbuf)+len(b) <= max(cap(cs.wbuf), bufpool.MaxPooled) {
		*dst = append(*dst, b...)
		return
	}
	cs.flushLocked()
	if !cs.closed.Load() {
		if _, err := cs.c.Write(b); err != nil {
			cs.closed.Store(true) // the connection is closing already
		}
	}
}

// capBody trims b, the body bytes about to go out with a handler-set
// Content-Length, to what that length has room for (Write refuses more, but
// the length may have been set after the bytes were written), and closes
// the connection after the response if it had to.
func (w *ResponseWriter) capBody(b []byte) []byte {
	if w.clen < 0 {
		return b
	}
	if room := max(w.clen-w.written, 0); int64(len(b)) > room {
		w.closeAfter = true
		b = b[:room]
	}
	return b
}

// fits reports whether n more body bytes stay within a Content-Length set
// by the handler. If not, the connection closes after the response.
func (w *ResponseWriter) fits(n int) bool {
	if w.clen < 0 {
		return true
	}
	have := w.written + int64(len(w.body))
	if w.head {
		have = w.headBytes
	}
	if have+int64(n) <= w.clen {
		return true
	}
	w.closeAfter = true
	return false
}

// WriteHeader sets the status code. The first call wins, and a Write
// before it means 200. Informational codes other than 101 are ignored.
// It panics for a code outside 100-999.
func (w *ResponseWriter) WriteHeader(code int) {
	if code < 100 || code > 999 {
		panic("http: invalid WriteHeader code " + strconv.Itoa(code))
	}
	if w.wroteHeader || (code < 200 && code != 101) {
		return
	}
	w.wroteHeader = true
	w.status = code
}

// Status is the status code the response has (200 unless set).
func (w *ResponseWriter) Status() int { return w.status }

// Write adds p to the body. It does not keep p. It returns ErrClosed once
// the connection has closed, ErrBodyNotAllowed for a 1xx, 204 or 304, and
// ErrContentLength (writing nothing of p, and closing the connection after
// the response) if the body would exceed a Content-Length set by the
// handler. In answer to HEAD the bytes are counted (for Content-Length)
// and dropped. After Async it may wait for the client (see Flush).
func (w *ResponseWriter) Write(p []byte) (int, error) { return write(w, p) }

// WriteString is Write for a string.
func (w *ResponseWriter) WriteString(s string) (int, error) { return write(w, s) }

func write[T string | []byte](w *ResponseWriter, p T) (int, error) {
	if w.cs.closed.Load() {
		return 0, ErrClosed
	}
	w.wroteHeader = true
	if bodyless(w.status) {
		return 0, ErrBodyNotAllowed
	}
	if !w.fits(len(p)) {
		return 0, ErrContentLength
	}
	if w.head {
		w.headBytes += int64(len(p))
		return len(p), nil
	}
	if b, ok := any(p).([]byte); ok && len(w.body)+len(b) >= flushThreshold {
		// A large write goes out with what is buffered, without being
		// copied into the buffer (grown past what the pool keeps) first.
		if err := w.flush(b); err != nil {
			return 0, err
		}
		return len(p), nil
	}
	w.body = append(w.body, p...)
	if len(w.body) >= flushThreshold {
		if err := w.Flush(); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

// Flush sends the header section, if not yet sent, and the body written so
// far; the response then streams (see ResponseWriter). When earlier
// responses of the connection are still open, the bytes wait behind them.
//
// After Async, on the goroutine that finishes the response, Flush (and so
// Write, which flushes every 64 KiB) waits, as net/http's Write does: until
// the responses before this one have gone out, then until the client has
// taken enough of what is queued. A client that reads nothing for the
// Server's IdleTimeout is disconnected, and Flush then returns ErrClosed.
func (w *ResponseWriter) Flush() error { return w.flush(nil) }

// flush is Flush with more body bytes, p, after those buffered: where the
// response is first in line they go from where they are, not copied into
// the buffer first.
func (w *ResponseWriter) flush(p []byte) error {
	cs := w.cs
	cs.mu.Lock()
	if cs.closed.Load() {
		cs.mu.Unlock()
		return ErrClosed
	}
	if w.finished {
		cs.mu.Unlock()
		return nil
	}
	w.wroteHeader = true
	dst := cs.target(w, len(w.body)+len(p)+512)
	if !w.headerSent {
		*dst = w.appendHead(*dst, false)
	}
	w.putBody(dst, p)
	cs.pumpLocked()
	if cs.batching {
		cs.flushLocked()
	}
	// Not while the handler itself runs: on the loop, which it must not
	// block.
	wait := w.async && w.returned
	cs.mu.Unlock()
	if wait {
		return cs.waitTurn(w)
	}
	return nil
}

// Async keeps the response open after the handler returns: it is finished
// later by End, which (like Write, Flush, Header and WriteHeader) may then
// be called from any goroutine, one at a time. Until End, the responses to
// requests behind this one on the connection wait. The Request is still
// valid only until the handler returns: copy what the goroutine needs.
// A graceful stop of the worker waits for End (herd.Conn.Hold).
func (w *ResponseWriter) Async() {
	cs := w.cs
	cs.mu.Lock()
	if !w.async && !w.finished {
		w.async = true
		w.refs++
		w.hold = cs.c.Hold()
	}
	cs.mu.Unlock()
}

// End finishes the response: what is left of it goes out (or waits for
// the responses before it). A synchronous handler need not call it; after
// Async it must be called exactly once. w must not be used after End.
func (w *ResponseWriter) End() {
	cs := w.cs
	cs.mu.Lock()
	if w.ended {
		if w.panicked {
			// The response was finished when the handler panicked, and
			// the Hold released; drop the reference End owned.
			w.panicked = false
			cs.releaseLocked(w)
		}
		cs.mu.Unlock()
		return
	}
	async, hold := w.async, w.hold
	w.hold = nil
	cs.finishLocked(w)
	if async {
		cs.releaseLocked(w)
	}
	cs.mu.Unlock()
	hold.Release() // nil unless Async
}

// Upgrade makes the connection carry another protocol once this response
// (status 101, written by the caller with WriteHeader(101) and headers) has
// gone out: every byte the client sends after the request — including
// bytes already received behind it — goes to s.OnData, and s.OnClose runs
// when the connection closes.
//
// Upgrade ends the response and sends it at once, or once the responses to
// earlier pipelined requests have gone out. Bytes of the new protocol must
// follow the 101: send them from s's OnStart (see StreamStarter), or from
// OnData; bytes sent with Conn().Send straight after Upgrade follow the 101
// only when no earlier response was still open. Upgrade must be called by
// the handler itself, on the loop, not after Async; a 101 carries no body
// and no Content-Length. A WriteHeader(101) without Upgrade is not an
// upgrade: the connection then goes on with HTTP.
func (w *ResponseWriter) Upgrade(s Stream) {
	cs := w.cs
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if w.async {
		panic("http: Upgrade after Async")
	}
	if w.finished || w.headerSent {
		return
	}
	w.status = 101
	w.wroteHeader = true
	w.body = w.body[:0]
	w.upgrade = s
	// "Connection: Upgrade, close" asks for the upgrade: the connection
	// now belongs to the new protocol, which ends it in its own way.
	w.closeAfter = false
	cs.peerDone = false
	cs.finishLocked(w)
	if cs.batching {
		cs.flushLocked()
	}
}

// resetForError replaces the response with a plain error answer that
// closes the connection.
func (w *ResponseWriter) resetForError(code int) {
	w.hdr = w.hdr[:0]
	w.body = w.body[:0]
	w.clen = -1
	w.headBytes = 0
	w.userDate, w.userConn = false, false
	w.wroteHeader = false
	w.closeAfter = true
	Error(w, code)
}

// Error replies with code and its status text as a plain-text body. It
// drops a Content-Length set before, as net/http's Error does.
func Error(w *ResponseWriter, code int) {
	w.Header().Del("Content-Length")
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(code)
	var b [48]byte
	msg := strconv.AppendInt(b[:0], int64(code), 10)
	msg = append(msg, ' ')
	msg = append(msg, nethttp.StatusText(code)...)
	msg = append(msg, '\n')
	w.Write(msg)
}

// Header is the header section of a response being built.
type Header struct{ w *ResponseWriter }

// Header gives access to the response's header fields. Changes count until
// the header section is sent (at Flush or when the response ends).
func (w *ResponseWriter) Header() Header { return Header{w} }

// Set replaces the fields named name with one of value. A name that is not
// a token, or a value with control characters (CR, LF, NUL...; HTAB is
// allowed), is ignored: no header injection. Content-Length sets the length
// the response declares, streamed or not (and that of the answer to HEAD),
// and bounds its body (see Write); Transfer-Encoding is
// ignored (the server chooses the framing); Connection: close closes the
// connection after the response.
func (h Header) Set(name, value string) {
	h.Del(name)
	h.Add(name, value)
}

// Add adds a field, with the checks of Set.
func (h Header) Add(name, value string) {
	w := h.w
	if !validName(name) || !validValue(value) {
		return
	}
	switch len(name) {
	case 4:
		if equalFold(name, "date") {
			w.userDate = true
		}
	case 10:
		if equalFold(name, "connection") {
			w.userConn = true
			forElements([]byte(value), func(t []byte) {
				if equalFold(t, "close") {
					w.closeAfter = true
				}
			})
		}
	case 14:
		if equalFold(name, "content-length") {
			// Once the head is out, the declared length stands.
			if n, ok := parseDigits([]byte(value)); ok && !w.headerSent {
				w.clen = n
			}
			return
		}
	case 17:
		if equalFold(name, "transfer-encoding") {
			return
		}
	}
	w.hdr = append(w.hdr, name...)
	w.hdr = append(w.hdr, ": "...)
	w.hdr = append(w.hdr, value...)
	w.hdr = append(w.hdr, "\r\n"...)
}

// Del removes the fields named name.
func (h Header) Del(name string) {
	w := h.w
	if equalFold(name, "content-length") {
		if !w.headerSent {
			w.clen = -1
		}
		return
	}
	if equalFold(name, "date") {
		w.userDate = false
	}
	if equalFold(name, "connection") {
		w.userConn = false
	}
	b := w.hdr
	out := b[:0]
	for len(b) > 0 {
		end := indexCRLF(b) + 2
		line := b[:end]
		b = b[end:]
		if c := indexColon(line); c >= 0 && equalFoldAny(line[:c], name) {
			continue
		}
		out = append(out, line...)
	}
	w.hdr = out
}

// Get returns the value of the first field named name, or nil. The slice
// is valid until the header changes.
func (h Header) Get(name string) []byte {
	b := h.w.hdr
	for len(b) > 0 {
		end := indexCRLF(b)
		line := b[:end]
		b = b[end+2:]
		if c := indexColon(line); c >= 0 && equalFoldAny(line[:c], name) {
			return line[c+2:]
		}
	}
	return nil
}

func indexCRLF(b []byte) int {
	for i := 0; i+1 < len(b); i++ {
		if b[i] == '\r' && b[i+1] == '\n' {
			return i
		}
	}
	return len(b) - 2
}

func indexColon(b []byte) int {
	for i, c := range b {
		if c == ':' {
			return i
		}
	}
	return -1
}

func validName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !isToken[s[i]] {
			return false
		}
	}
	return true
}

func validValue(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < ' ' && c != '\t') || c == 0x7f {
			return false
		}
	}
	return true
}

// The Date header, formatted at most once a second.
type dateEntry struct {
	sec int64
	b   [len(nethttp.TimeFormat)]byte
}

var curDate atomic.Pointer[dateEntry]

// dateAt returns the Date header value for the second of now.
func dateAt(now time.Time) *dateEntry {
	sec := now.Unix()
	d := curDate.Load()
	if d == nil || d.sec != sec {
		d = &dateEntry{sec: sec}
		now.UTC().AppendFormat(d.b[:0], nethttp.TimeFormat)
		curDate.Store(d)
	}
	return d
}
