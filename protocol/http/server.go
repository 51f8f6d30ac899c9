package herdhttp

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/seed358e4494/herd"
	"github.com/seed358e4494/herd/internal/bufpool"
)

// Defaults for zero-valued Server fields.
const (
	DefaultMaxHeaderBytes = 16 << 10
	DefaultMaxBodyBytes   = 8 << 20
	DefaultHeaderTimeout  = 10 * time.Second
	DefaultReadTimeout    = 2 * time.Minute
	DefaultIdleTimeout    = 60 * time.Second
	// MaxInFlight is how many requests of one connection may be waiting
	// for their responses; beyond it the server stops reading from that
	// connection until earlier responses have gone out.
	MaxInFlight = 16
)

// maxLimit bounds MaxHeaderBytes + MaxBodyBytes: offsets into a request
// are int32.
const maxLimit = 1<<31 - 1

// Handler serves one request. It runs on the connection's loop and must not
// block; call w.Async to finish the response from another goroutine. r and
// every slice it returns are valid only until the handler returns.
type Handler func(w *ResponseWriter, r *Request)

// Server serves HTTP/1.1 on a herd.Worker. Configure its fields, then call
// Attach before running the worker; the fields must not change after.
type Server struct {
	// Handler serves every request. Nil answers 404 to everything.
	Handler Handler
	// MaxHeaderBytes bounds the request line and header fields (and, on
	// their own, the trailer fields of a chunked body). Larger: 431 and the
	// connection closes. Zero means DefaultMaxHeaderBytes. With
	// MaxBodyBytes, it must stay below 2 GiB (Attach fails otherwise).
	MaxHeaderBytes int
	// MaxBodyBytes bounds a request body (decoded, for chunked bodies).
	// Larger: 413 and the connection closes. Zero means DefaultMaxBodyBytes.
	// MaxHeaderBytes + MaxBodyBytes must stay below 2 GiB (Attach fails
	// otherwise).
	MaxBodyBytes int
	// HeaderTimeout bounds the time from the first byte of a request to the
	// end of its header section. Exceeded: 408 and the connection closes.
	// Zero means DefaultHeaderTimeout; negative means none.
	HeaderTimeout time.Duration
	// ReadTimeout bounds the time from the first byte of a request to its
	// last (header section and body), as net/http's ReadTimeout does: a
	// client that sends its body a byte at a time cannot hold the
	// connection and its buffer for ever. Exceeded: 408 and the connection
	// closes. Zero means DefaultReadTimeout; negative means none.
	ReadTimeout time.Duration
	// IdleTimeout closes a connection that has sent nothing for this long
	// while no response of it is pending: quietly between requests, with
	// 408 in the middle of a body. It also aborts a connection whose
	// client has read nothing of a pending response for this long (the
	// response cannot be delivered). Zero means DefaultIdleTimeout;
	// negative means none.
	IdleTimeout time.Duration
	// Logger receives handler panics. Nil means slog.Default().
	Logger *slog.Logger

	mu       sync.Mutex
	attached bool
	lim      limits
	once     sync.Once
	loops    atomic.Pointer[[]*loopState]
}

// Errors returned by Attach.
var (
	ErrAttached = errors.New("http: server already attached to a worker")
)

// Attach makes w serve HTTP with s: each connection the worker accepts is
// handed to s (herd.Conn.SetHandler) before w.OnConnect, which stays the
// application's, as w.OnClose does (for bookkeeping: counting, a
// registry); and w.OnWorkerStart is chained (s's part runs first) to start
// one timeout sweep per loop. The server takes each connection's raw
// stream: Attach fails, naming the field, where herd.Worker.Claim does
// (a udp:// worker, a Protocol, OnMessage or OnPacket set, another server
// attached already). A Server serves one Worker.
func (s *Server) Attach(w *herd.Worker) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.attached {
		return ErrAttached
	}
	if s.MaxHeaderBytes < 0 || s.MaxBodyBytes < 0 {
		return fmt.Errorf("http: MaxHeaderBytes and MaxBodyBytes must not be negative")
	}
	// A request (head and body) is parsed in place with 32-bit offsets.
	hb, bb := int64(s.MaxHeaderBytes), int64(s.MaxBodyBytes)
	if hb == 0 {
		hb = DefaultMaxHeaderBytes
	}
	if bb == 0 {
		bb = DefaultMaxBodyBytes
	}
	if hb+bb > maxLimit {
		return fmt.Errorf("http: MaxHeaderBytes + MaxBodyBytes must be below 2 GiB")
	}
	if err := w.Claim("http.Server"); err != nil {
		return fmt.Errorf("http: %w", err)
	}
	s.resolve()
	s.attached = true
	prev := w.OnWorkerStart
	w.OnWorkerStart = func(l *herd.Loop) {
		s.startLoop(l)
		if prev != nil {
			prev(l)
		}
	}
	app := w.OnConnect
	w.OnConnect = func(c *herd.Conn) {
		s.onConnect(c)
		if app != nil {
			app(c)
		}
	}
	return nil
}

func (s *Server) resolve() {
	s.once.Do(func() {
		l := limits{
			header:      s.MaxHeaderBytes,
			body:        int64(s.MaxBodyBytes),
			headerTime:  int64(s.HeaderTimeout),
			readTime:    int64(s.ReadTimeout),
			idleTime:    int64(s.IdleTimeout),
			maxInFlight: MaxInFlight,
		}
		if l.header == 0 {
			l.header = DefaultMaxHeaderBytes
		}
		if l.body == 0 {
			l.body = DefaultMaxBodyBytes
		}
		if l.headerTime == 0 {
			l.headerTime = int64(DefaultHeaderTimeout)
		}
		if l.idleTime == 0 {
			l.idleTime = int64(DefaultIdleTimeout)
		}
		if l.readTime == 0 {
			l.readTime = int64(DefaultReadTimeout)
		}
		l.readTime = max(l.readTime, 0)
		l.headerTime = max(l.headerTime, 0)
		l.idleTime = max(l.idleTime, 0)
		s.lim = l
	})
}

func (s *Server) logger() *slog.Logger {
	if s.Logger != nil {
		return s.Logger
	}
	return slog.Default()
}

// loopState is the server's part of one loop: the connections its timeout
// sweep looks at. Only the loop goroutine touches it.
type loopState struct {
	s     *Server
	loop  *herd.Loop
	conns []*conn // each knows its slot
}

func (s *Server) startLoop(l *herd.Loop) {
	ls := &loopState{s: s, loop: l}
	s.mu.Lock()
	var loops []*loopState
	if p := s.loops.Load(); p != nil {
		loops = append(loops, *p...)
	}
	for len(loops) <= l.Index() {
		loops = append(loops, nil)
	}
	loops[l.Index()] = ls
	s.loops.Store(&loops)
	s.mu.Unlock()
	// One sweep per loop checks every connection's timeouts: no timer per
	// request. It runs four times per shortest timeout, so a timeout fires
	// between 1 and 1.25 times its value.
	period := int64(0)
	for _, d := range []int64{s.lim.headerTime, s.lim.readTime, s.lim.idleTime} {
		if d > 0 && (period == 0 || d < period) {
			period = d
		}
	}
	if period > 0 {
		l.Every(max(time.Duration(period/4), time.Millisecond), ls.sweep)
	}
}

func (s *Server) loopState(l *herd.Loop) *loopState {
	if p := s.loops.Load(); p != nil && l.Index() < len(*p) {
		return (*p)[l.Index()]
	}
	return nil
}

// onConnect attaches the server's state to a new connection.
func (s *Server) onConnect(c *herd.Conn) {
	ls := s.loopState(c.Loop())
	if ls == nil {
		c.Close()
		return
	}
	cs := s.newConn(c, c.Loop())
	ls.add(cs)
	c.SetHandler(cs)
}

func (ls *loopState) add(cs *conn) {
	cs.ls, cs.slot = ls, len(ls.conns)
	ls.conns = append(ls.conns, cs)
}

// remove takes cs off the sweep's list (it closed, or was upgraded).
func (ls *loopState) remove(cs *conn) {
	if cs.ls != ls {
		return
	}
	last := ls.conns[len(ls.conns)-1]
	ls.conns[cs.slot], last.slot = last, cs.slot
	ls.conns[len(ls.conns)-1] = nil
	ls.conns = ls.conns[:len(ls.conns)-1]
	cs.ls = nil
}

// OnData implements herd.Handler: one read's worth of input.
func (cs *conn) OnData(_ *herd.Conn, data []byte) { cs.onData(data) }

// OnClose implements herd.Handler: the connection has closed.
func (cs *conn) OnClose(*herd.Conn) {
	if cs.ls != nil {
		cs.ls.remove(cs)
	}
	cs.onClose()
}

// LeaveLoop implements herd.LoopMover: Worker.Scale hands the connection
// to another loop, whose sweep takes over its timeouts.
func (cs *conn) LeaveLoop(*herd.Conn) {
	if cs.ls != nil {
		cs.ls.remove(cs)
		cs.relist = true
	}
}

// JoinLoop implements herd.LoopMover.
func (cs *conn) JoinLoop(c *herd.Conn) {
	cs.loop = c.Loop()
	if cs.relist {
		cs.relist = false
		if ls := cs.s.loopState(c.Loop()); ls != nil {
			ls.add(cs)
		}
	}
}

// drainIdle is how long a connection of a stopping worker may wait for its
// next request before it is closed: long enough that a client which
// answers at once (a keep-alive client mid-stream) sends one and gets its
// response with Connection: close, rather than seeing the connection
// close under a request it has just sent.
const drainIdle = 100 * time.Millisecond

// Stop implements herd.Stopper: the worker stops gracefully. The next
// response says Connection: close and ends the connection; one with no
// request in progress is closed after drainIdle.
func (cs *conn) Stop(c *herd.Conn) {
	cs.draining = true
	c.Loop().AfterFunc(drainIdle, cs.closeIfIdle)
}

// closeIfIdle closes a stopping connection with neither a request being
// read nor a response in line; else looks again later (the response in
// progress closes it itself).
func (cs *conn) closeIfIdle() {
	if cs.closed.Load() || cs.upgrading != nil {
		return
	}
	cs.mu.Lock()
	idle := len(cs.queue) == 0 && !cs.p.started
	if idle {
		cs.closeLocked()
	}
	cs.mu.Unlock()
	if !idle {
		if hc := cs.herdConn(); hc != nil {
			hc.Loop().AfterFunc(drainIdle, cs.closeIfIdle)
		}
	}
}

func (ls *loopState) sweep() {
	now := nowNano()
	// Backwards: a connection that closes on the way leaves the list (the
	// last one takes its slot), and none is skipped.
	for i := len(ls.conns) - 1; i >= 0; i-- {
		if i < len(ls.conns) {
			ls.conns[i].checkTimeouts(now)
		}
	}
}

// link is the connection as the server uses it: a *herd.Conn. The
// package's tests run the parser and the handlers without a network over a
// fake that implements it.
type link interface {
	SetHandler(h herd.Handler)
	Write(b []byte) (int, error)
	WaitWritable(ctx context.Context) error
	SendQueueBytes() int
	Close()
	CloseNoWait()
	Abort()
	PauseRecv()
	ResumeRecv()
	Hold() *herd.Hold
	Post(f func()) bool // on the connection's loop, wherever Scale moved it
	RemoteAddr() net.Addr
	LastActive() time.Time
}

// loopLink is the loop as the server uses it, on that loop: a *herd.Loop
// (a fake in tests).
type loopLink interface {
	Now() time.Time
}

var epoch = time.Now()

// nowNano is a monotonic clock in nanoseconds.
func nowNano() int64 { return int64(time.Since(epoch)) }

// conn is the server's state for one connection.
type conn struct {
	s    *Server
	lim  *limits
	ls   *loopState // the sweep's list it is on, at slot; nil once off it
	slot int
	c    link     // the connection
	loop loopLink // its loop (Scale may change it: JoinLoop)
	// relist: the connection was on its loop's sweep list when Scale took
	// it off that loop; it goes on the new loop's list.
	relist bool

	// Owned by the loop goroutine.
	in        []byte // the start of a request not yet complete
	p         parser
	req       Request
	lastRead  int64
	reqStart  int64
	stopped   bool                                // no more requests are read: closing or upgrading
	draining  bool                                // the worker stops: the next response closes the connection (Stop)
	upgrading Stream                              // set once a handler upgraded; bytes then wait in in
	tls       atomic.Pointer[tls.ConnectionState] // the TLS session's state, once asked for (nil: no TLS, or not yet)

	held   atomic.Bool // too many responses pending: reading paused
	closed atomic.Bool // closing or closed: responses are dropped

	mu          sync.Mutex // guards what follows, and the order of writes
	queue       []*ResponseWriter
	moved       chan struct{}   // closed when the line moves on or the connection closes (waitTurn)
	wbuf        []byte          // responses batched during one read
	batching    bool            // the loop is inside onData: writes go to wbuf
	batchNow    int64           // while batching: the time of the read (nowNano scale)
	batchDate   *dateEntry      // while batching: the Date of the read's second
	idleFrom    int64           // when the queue last emptied
	peerDone    bool            // the client said Connection: close and its request was read whole
	upgradeDone Stream          // the 101 has gone out: switch to this stream
	spare       *ResponseWriter // while batching: a released one, for the next request

	queueBuf [4]*ResponseWriter // queue's first array (guarded by mu)
}

func (s *Server) newConn(c link, l loopLink) *conn {
	s.resolve()
	now := nowNano()
	cs := &conn{s: s, lim: &s.lim, c: c, loop: l, lastRead: now, idleFrom: now}
	cs.queue = cs.queueBuf[:0]
	cs.p.reset()
	return cs
}

// herdConn is the connection as a *herd.Conn (nil over the tests' fake),
// for the application's and the Stream's use.
func (cs *conn) herdConn() *herd.Conn {
	hc, _ := cs.c.(*herd.Conn)
	return hc
}

// onData takes one read's worth of input.
func (cs *conn) onData(data []byte) {
	if cs.upgrading != nil {
		cs.in = append(cs.in, data...)
		return
	}
	if cs.stopped || cs.closed.Load() {
		return
	}
	t := cs.loop.Now()
	now := int64(t.Sub(epoch))
	cs.lastRead = now
	cs.beginBatch(t, now)
	cs.process(data, now)
	cs.endBatch()
}

// beginBatch starts collecting the responses of one read (or resume) in
// wbuf. t and now (t on the nowNano scale) are its time: the responses
// made during the batch take their Date and idle time from it instead of
// reading the clock each.
func (cs *conn) beginBatch(t time.Time, now int64) {
	d := dateAt(t)
	cs.mu.Lock()
	cs.batching = true
	cs.batchNow = now
	cs.batchDate = d
	cs.mu.Unlock()
}

// endBatch sends the responses batched during a read, and switches to an
// upgraded stream once its 101 has gone out.
func (cs *conn) endBatch() {
	cs.mu.Lock()
	cs.batching = false
	cs.batchDate = nil
	if cs.spare != nil {
		rwPool.Put(cs.spare)
		cs.spare = nil
	}
	cs.flushLocked()
	s := cs.upgradeDone
	cs.upgradeDone = nil
	cs.mu.Unlock()
	if s != nil {
		cs.switchStream(s)
	}
}

// flushLocked sends what was batched.
func (cs *conn) flushLocked() {
	if len(cs.wbuf) > 0 {
		if _, err := cs.c.Write(cs.wbuf); err != nil {
			cs.closed.Store(true) // the connection is closing already
		}
		cs.wbuf = cs.wbuf[:0]
	}
	if cap(cs.wbuf) > 0 && !cs.batching {
		bufpool.Put(cs.wbuf)
		cs.wbuf = nil
	}
}

// process parses and serves the requests in cs.in followed by data.
func (cs *conn) process(data []byte, now int64) {
	buf := data
	if len(cs.in) > 0 {
		cs.in = bufpool.AppendInput(cs.in, data, cs.p.whole(), cs.lim.header+int(cs.lim.body))
		buf = cs.in
	}
	off := 0
	for off < len(buf) && !cs.stopped && !cs.held.Load() && !cs.closed.Load() {
		b := buf[off:]
		if !cs.p.started {
			cs.p.started = true
			cs.reqStart = now
		}
		st := cs.p.advance(b, cs.lim)
		if st == needMore {
			if cs.p.expect100 && !cs.p.sent100 && !cs.p.bodyStarted(len(b)) {
				cs.p.sent100 = true
				cs.interim()
			}
			break
		}
		if st != complete {
			cs.fail(st)
			break
		}
		n := cs.p.consumed
		cs.serve(b[:n])
		cs.p.reset()
		off += n
	}
	rest := buf[off:]
	if cs.upgrading == nil && (cs.stopped || cs.closed.Load()) {
		rest = nil
	}
	if cs.p.started && len(rest) > 0 {
		rest = rest[:cs.p.compact(rest)]
	}
	cs.in = bufpool.KeepInput(cs.in, rest, cs.lim.header+int(cs.lim.body))
}

// serve runs the handler for the complete request b.
func (cs *conn) serve(b []byte) {
	r := &cs.req
	r.set(cs, b)
	if r.wantClose {
		cs.stopped = true // nothing after this request is read
		cs.mu.Lock()
		cs.peerDone = true
		cs.mu.Unlock()
	}
	w := cs.newResponse(r)
	if cs.draining {
		// The worker stops: this response tells the client so, and is
		// the last (the client then opens a connection elsewhere).
		w.closeAfter = true
		cs.stopped = true
	}
	cs.call(w, r)
	cs.mu.Lock()
	w.returned = true
	if !w.async {
		cs.finishLocked(w)
		if w.closeAfter {
			cs.stopped = true
		}
	}
	up := w.upgrade
	done := cs.upgradeDone != nil
	cs.releaseLocked(w)
	cs.mu.Unlock()
	if up != nil {
		// The bytes behind the request are the new protocol's: keep them
		// for the Stream, and read no more until the 101 is out.
		cs.stopped = true
		cs.upgrading = up
		if !done {
			cs.c.PauseRecv()
		}
	}
}

// call runs the handler, turning a panic into a 500 (or an abort once the
// response has begun).
func (cs *conn) call(w *ResponseWriter, r *Request) {
	defer func() {
		if v := recover(); v != nil {
			cs.s.logger().Error("http: handler panicked", "panic", v)
			cs.mu.Lock()
			sent, ended, async := w.headerSent, w.ended, w.async
			cs.mu.Unlock()
			switch {
			case sent:
				cs.abort()
			case !ended:
				w.resetForError(500)
			}
			if async && !ended {
				cs.endAfterPanic(w)
			}
		}
	}()
	h := cs.s.Handler
	if h == nil {
		Error(w, 404)
		return
	}
	h(w, r)
}

// endAfterPanic finishes the response of a handler that called Async and
// then panicked: nothing else would (serve leaves async responses to End),
// and the requests behind it would wait forever. The Hold is released now;
// an End from the goroutine that may still own w only drops its reference.
func (cs *conn) endAfterPanic(w *ResponseWriter) {
	cs.mu.Lock()
	hold := w.hold
	w.hold = nil
	cs.finishLocked(w)
	w.panicked = true
	cs.mu.Unlock()
	hold.Release()
}

// fail answers a request that cannot be served with code and closes the
// connection once the answer (and those before it) have gone out.
func (cs *conn) fail(code int) {
	cs.stopped = true
	w := cs.newResponse(nil)
	w.resetForError(code)
	cs.mu.Lock()
	cs.finishLocked(w)
	cs.releaseLocked(w)
	cs.mu.Unlock()
}

// interim sends "100 Continue" in its place among the responses.
func (cs *conn) interim() {
	w := cs.newResponse(nil)
	w.interim = true
	cs.mu.Lock()
	cs.finishLocked(w)
	cs.releaseLocked(w)
	cs.mu.Unlock()
}

// abort closes the connection at once.
func (cs *conn) abort() {
	cs.mu.Lock()
	cs.closed.Store(true)
	cs.mu.Unlock()
	cs.stopped = true
	cs.c.Abort()
}

// resume reads on after enough pending responses have gone out.
func (cs *conn) resume() {
	if cs.stopped || cs.closed.Load() { // stopped also once upgraded
		return
	}
	t := cs.loop.Now()
	now := int64(t.Sub(epoch))
	cs.beginBatch(t, now)
	cs.process(nil, now)
	cs.endBatch()
	if !cs.held.Load() && !cs.stopped {
		cs.c.ResumeRecv()
	}
}

// switchStream hands the connection to an upgraded protocol, with the bytes
// that arrived after the upgrade request.
func (cs *conn) switchStream(s Stream) {
	cs.upgrading = nil
	if cs.ls != nil {
		cs.ls.remove(cs) // no more HTTP timeouts
	}
	cs.c.SetHandler(s) // the next reads go to s, past this package
	rest := cs.in
	cs.in = nil
	cs.held.Store(false)
	if st, ok := s.(StreamStarter); ok {
		st.OnStart(cs.herdConn())
	}
	cs.c.ResumeRecv()
	if len(rest) > 0 {
		s.OnData(cs.herdConn(), rest)
	}
	bufpool.Put(rest)
}

func (cs *conn) checkTimeouts(now int64) {
	if cs.upgrading != nil {
		return // the new protocol's, from its 101 on
	}
	lim := cs.lim
	if cs.closed.Load() {
		return
	}
	if q, idle := cs.stalled(); q > 0 && lim.idleTime > 0 && idle > time.Duration(lim.idleTime) {
		// The client has taken nothing of what it is owed for
		// IdleTimeout: the response cannot be delivered.
		cs.s.logger().Info("http: client reads nothing of its response; closing", "remote", cs.remote(), "queued", q, "after", idle)
		cs.abort()
		return
	}
	if cs.stopped {
		return
	}
	if cs.p.started && ((cs.p.phase == phHead && lim.headerTime > 0 && now-cs.reqStart > lim.headerTime) ||
		(lim.readTime > 0 && now-cs.reqStart > lim.readTime)) {
		cs.beginBatch(time.Now(), now)
		cs.fail(408)
		cs.endBatch()
		return
	}
	if lim.idleTime <= 0 {
		return
	}
	cs.mu.Lock()
	busy := len(cs.queue) > 0
	since := max(cs.idleFrom, cs.lastRead)
	cs.mu.Unlock()
	if busy || now-since <= lim.idleTime {
		return
	}
	if cs.p.started {
		cs.beginBatch(time.Now(), now)
		cs.fail(408)
		cs.endBatch()
		return
	}
	cs.stopped = true
	cs.closed.Store(true)
	cs.c.Close()
}

// stalled gives what the connection's send queue holds and how long ago
// the connection last made progress (herd counts a read, or any bytes
// written): with bytes queued, that is how long the client has taken
// nothing. (The queue's size alone would not tell: a producer refills it
// as the client reads.)
func (cs *conn) stalled() (queued int, idle time.Duration) {
	queued = cs.c.SendQueueBytes()
	if queued == 0 {
		return 0, 0
	}
	return queued, cs.loop.Now().Sub(cs.c.LastActive())
}

// onClose runs once the connection has closed.
func (cs *conn) onClose() {
	cs.closed.Store(true)
	cs.stopped = true
	cs.mu.Lock()
	cs.wakeWaitersLocked()
	q := cs.queue
	cs.queue = nil
	var hooks []func()
	for _, w := range q {
		if w.onClose != nil {
			hooks = append(hooks, w.onClose)
		}
		cs.releaseLocked(w)
	}
	clear(q)
	cs.mu.Unlock()
	for _, f := range hooks {
		f()
	}
	bufpool.Put(cs.in)
	cs.in = nil
	if cs.upgrading != nil {
		// Closed before the 101 could go out: the Stream still hears of
		// it. (Once switched, the Stream is the connection's handler and
		// herd tells it.)
		cs.upgrading.OnClose(cs.herdConn())
	}
}
