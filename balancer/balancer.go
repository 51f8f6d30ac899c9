package balancer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/seed358e4494/herd"
)

// Defaults for the zero values of Balancer's fields.
const (
	DefaultConnectTimeout = 5 * time.Second
	DefaultRetries        = 2
	DefaultRise           = 2
	DefaultFall           = 3
	DefaultEjectFor       = 10 * time.Second
	MaxWeight             = 10000
)

// Backend is a server the balancer forwards to.
type Backend struct {
	// Addr is "host:port" (tcp://, tcp4://, tcp6:// also), or
	// unix:///path; see herd.Loop.Dial.
	Addr string
	// Weight is the backend's share relative to the others'; zero means
	// 1. The algorithms that ignore weights say so.
	Weight int
}

// Balancer forwards each connection a herd Worker accepts to one of its
// Backends, chosen by Algorithm, and pipes the two together on the
// client's loop (herd.Pipe: backpressure both ways, half-close and aborts
// passed on). Configure it, then Attach it to a Worker before the Worker
// runs; its fields must not change after.
//
// Faults: a backend that refuses or does not connect within
// ConnectTimeout is counted against it, and the connection is tried on
// another backend, up to Retries times; Fall failures in a row (connects
// of proxied connections and active checks alike) mark the backend down.
// A client for which no backend is left is closed at once. The Worker's
// IdleTimeout resets both sides of a proxied connection in which neither
// has sent anything for that long (a backend that accepts and never
// answers, or stalls mid-answer): the client sees a reset, not an end of
// stream it could take for a whole answer.
type Balancer struct {
	Backends  []Backend
	Algorithm Algorithm // zero: RoundRobin
	// ConnectTimeout bounds each connect to a backend; zero means
	// DefaultConnectTimeout.
	ConnectTimeout time.Duration
	// Retries is how many other backends a connection is tried on after a
	// failed connect; zero means DefaultRetries, negative none.
	Retries int
	// Health configures active checks and ejection.
	Health HealthCheck
	// SlowStart, if set, is how long a backend that comes back up takes
	// to reach its full weight: its weight grows from a tenth to whole
	// over that time, so that a cold server is not flooded at once.
	SlowStart time.Duration
	// Splice forwards with splice(2), through kernel pipes, without
	// copying the bytes through user space (Linux; see herd.PipeOptions).
	Splice bool
	// ProxyProtocol, 1 or 2, sends the PROXY protocol header of that
	// version to each backend before the client's bytes, so that backends
	// see the client's address; 0 sends none.
	ProxyProtocol int
	// ResolveLater lets Attach accept backends whose host names do not
	// resolve yet: each connect looks its name up anyway, and fails
	// (counted against the backend) while it does not resolve (HAProxy's
	// init-addr none). Without it, Attach looks every name up, within
	// ConnectTimeout, and refuses a name that does not resolve.
	ResolveLater bool
	// Logger receives state changes (backend up and down) at Info; nil
	// means slog.Default().
	Logger *slog.Logger

	mu       sync.Mutex // guards attached
	attached bool
	backends []*backend
	picker   picker
	// sourceHash: the picker needs the client's address.
	sourceHash bool
	retries    int
	noServer   atomic.Uint64 // clients closed because no backend was left
	// localErrors counts clients closed because this process could not
	// open a connection (out of descriptors, say).
	localErrors atomic.Uint64
	stop        context.CancelFunc
	ctx         context.Context
}

// HealthCheck configures how backends are found up or down.
type HealthCheck struct {
	// Interval between active checks of each backend; zero means no
	// active checks (then only failed connects of proxied connections
	// mark a backend down, for EjectFor).
	Interval time.Duration
	// Timeout bounds one check; zero means Interval.
	Timeout time.Duration
	// Rise is how many checks in a row must pass to mark a down backend
	// up, and Fall how many failures in a row mark it down; zero means
	// DefaultRise and DefaultFall (HAProxy's).
	Rise, Fall int
	// HTTPPath, if set, makes each check an HTTP/1.0 GET of that path
	// that must answer 2xx or 3xx; otherwise a check is a TCP connect.
	HTTPPath string
	// EjectFor is how long a backend marked down by failed connects stays
	// down when there are no active checks; zero means DefaultEjectFor.
	EjectFor time.Duration
}

// Attach makes w a balancer: each connection w accepts is handed to the
// balancer before w's OnConnect, which stays the application's, as
// OnClose does; the active checks run on w's loop 0, from OnWorkerStart
// to OnWorkerStop (chained, the application's too). Attach fails, naming
// the field, where herd.Worker.Claim does (a udp:// worker, a Protocol,
// OnMessage or OnPacket set, another server attached already: the
// balancer reads every connection). It checks the configuration:
// every backend address is parsed (a port must be a port: 1 to 65535, or
// a service name) and, unless ResolveLater, its host name looked up, so
// that a mistake fails here rather than every client later.
func (b *Balancer) Attach(w *herd.Worker) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.attached {
		return errors.New("balancer: already attached to a worker")
	}
	if len(b.Backends) == 0 {
		return errors.New("balancer: no backends")
	}
	alg := b.Algorithm
	if alg == "" {
		alg = RoundRobin
	}
	p, err := newPicker(alg)
	if err != nil {
		return err
	}
	if b.ProxyProtocol < 0 || b.ProxyProtocol > 2 {
		return fmt.Errorf("balancer: ProxyProtocol %d (want 0, 1 or 2)", b.ProxyProtocol)
	}
	h := &b.Health
	for _, f := range []struct {
		name     string
		value    any
		negative bool
	}{
		{"Health.Interval", h.Interval, h.Interval < 0}, {"Health.Timeout", h.Timeout, h.Timeout < 0},
		{"Health.Rise", h.Rise, h.Rise < 0}, {"Health.Fall", h.Fall, h.Fall < 0},
		{"ConnectTimeout", b.ConnectTimeout, b.ConnectTimeout < 0}, {"SlowStart", b.SlowStart, b.SlowStart < 0},
	} {
		if f.negative {
			return fmt.Errorf("balancer: %s is %v: must not be negative", f.name, f.value)
		}
	}
	if p := h.HTTPPath; p != "" && (p[0] != '/' || strings.ContainsFunc(p, func(r rune) bool { return r <= ' ' || r == 0x7f })) {
		// It goes into the request line as it is.
		return fmt.Errorf("balancer: Health.HTTPPath %q: want a path that starts with / and holds no space or control character", p)
	}
	b.picker = p
	b.sourceHash = alg == SourceHash
	b.retries = b.Retries
	if b.retries == 0 {
		b.retries = DefaultRetries
	}
	b.backends = make([]*backend, len(b.Backends))
	seen := map[string]string{}
	for i, cfg := range b.Backends {
		if cfg.Weight < 0 || cfg.Weight > MaxWeight {
			return fmt.Errorf("balancer: backend %q: weight %d (want 0 to %d)", cfg.Addr, cfg.Weight, MaxWeight)
		}
		be, err := b.newBackend(i, cfg)
		if err != nil {
			return err
		}
		key := endpoint(cfg.Addr)
		if first, ok := seen[key]; ok {
			return fmt.Errorf("balancer: backend %q listed twice (as %q first)", cfg.Addr, first)
		}
		seen[key] = cfg.Addr
		b.backends[i] = be
	}
	if !b.ResolveLater {
		for _, be := range b.backends {
			ctx, cancel := context.WithTimeout(context.Background(), be.dialer.Timeout)
			err := herd.LookupDialAddr(ctx, be.addr)
			cancel()
			if err != nil {
				return fmt.Errorf("balancer: backend: %w", err)
			}
		}
	}
	if err := w.Claim("balancer.Balancer"); err != nil {
		return fmt.Errorf("balancer: %w", err)
	}
	b.ctx, b.stop = context.WithCancel(context.Background())
	b.attached = true

	if app := w.OnConnect; app != nil {
		w.OnConnect = func(c *herd.Conn) {
			b.onConnect(c)
			app(c)
		}
	} else {
		w.OnConnect = b.onConnect
	}
	start, stop := w.OnWorkerStart, w.OnWorkerStop
	w.OnWorkerStart = func(l *herd.Loop) {
		if start != nil {
			start(l)
		}
		if l.Index() == 0 {
			b.startChecks(l)
		}
	}
	w.OnWorkerStop = func(l *herd.Loop) {
		if l.Index() == 0 {
			b.stop()
		}
		if stop != nil {
			stop(l)
		}
	}
	return nil
}

func (b *Balancer) logger() *slog.Logger {
	if b.Logger != nil {
		return b.Logger
	}
	return slog.Default()
}

// session is one client connection on its way to a backend. Until it is
// piped, it is the client's Handler: what the client sends meanwhile is
// kept here (as HAProxy keeps it in its buffer), written to the backend
// once connected, and kept for the next backend if the connect fails. So
// the client is read as usual, which costs no poller changes, and is
// paused only if it sends more than maxEarly before a backend is there.
type session struct {
	client    *herd.Conn
	key       uint64
	tried     uint64 // backends tried, by index (the first 64)
	triedMore []bool // all of them, if there are more than 64
	retries   int
	be        *backend   // the backend being dialed
	dialing   *herd.Conn // its connection, until it connects
	held      *herd.Hold // dialing's, so that a graceful stop lets the connect finish
	early     []byte     // what the client sent before the pipe
	paused    bool       // the client is paused: early is full
	closed    bool       // the client has closed
	// counted is the backend whose active count holds this session, nil
	// when none does. Every change goes through count and uncount, which
	// swap it: a close, an abort and a connect completing may arrive in
	// any order (an Abort only queues, and the connect may complete in
	// the same turn), and the session still leaves the count exactly once.
	// Atomic because Scale can move the client to another loop than its
	// backend connection's.
	counted atomic.Pointer[backend]
}

// count adds the session to be's active connections.
func (s *session) count(be *backend) {
	if old := s.counted.Swap(be); old != nil {
		old.release() // next runs only once uncounted; if not, still once each
	}
	be.active.Add(1)
}

// uncount takes the session out of its backend's active connections, if
// it is still in them.
func (s *session) uncount() {
	if be := s.counted.Swap(nil); be != nil {
		be.release()
	}
}

// pipeDone is Pipe's OnDone: the proxied connection has ended.
func (s *session) pipeDone(uint64, uint64, bool) { s.uncount() }

// maxEarly bounds what a session keeps of the client's bytes before a
// backend is connected.
const maxEarly = 64 << 10

func (s *session) ok(be *backend) bool {
	return be.usable() && !s.triedOne(be)
}

func (s *session) triedOne(be *backend) bool {
	if s.triedMore != nil {
		return s.triedMore[be.index]
	}
	return s.tried&(1<<be.index) != 0
}

func (s *session) setTried(be *backend, on bool) {
	if s.triedMore != nil {
		s.triedMore[be.index] = on
	} else if on {
		s.tried |= 1 << be.index
	} else {
		s.tried &^= 1 << be.index
	}
}

func (b *Balancer) onConnect(client *herd.Conn) {
	s := &session{client: client}
	if len(b.backends) > 64 {
		s.triedMore = make([]bool, len(b.backends))
	}
	if b.sourceHash {
		if a, ok := client.RemoteAddr().(*net.TCPAddr); ok {
			s.key = hashAddr(a.IP)
		}
	}
	client.SetHandler(s)
	b.next(s)
}

// OnData keeps what the client sends before its backend is connected.
func (s *session) OnData(c *herd.Conn, data []byte) {
	s.early = append(s.early, data...)
	if len(s.early) >= maxEarly && !s.paused {
		s.paused = true
		c.PauseRecv()
	}
}

// OnEnd: the client ended its stream before the pipe; Pipe passes it on.
func (s *session) OnEnd(*herd.Conn) {}

// Stop lets a session whose backend connect is under way go on when the
// worker stops gracefully: the connect is held, and the pipe it becomes
// stops softly (Pipe). The stop's timeout cuts it, with a reset.
func (s *session) Stop(*herd.Conn) {}

// OnClose ends a session whose client left before it was piped.
func (s *session) OnClose(*herd.Conn) {
	s.closed = true
	if s.dialing != nil {
		s.dialing.Abort() // a connect given up reaches no OnError
		s.dialing, s.held = nil, nil
	}
	s.uncount()
}

// next dials the session's next backend, or closes the client if none is
// left.
func (b *Balancer) next(s *session) {
	if s.closed {
		return
	}
	be := b.picker.pick(b.backends, s.key, s.ok)
	if be == nil {
		b.noServer.Add(1)
		s.client.Close()
		return
	}
	s.setTried(be, true)
	s.be = be
	s.count(be)
	// No context: a stopping worker ends its connects itself, and a
	// context would cost a watch per connection.
	c, err := s.client.Loop().Dial(context.Background(), be.addr, be.dialer)
	if err != nil { // the address was checked at Attach
		b.dialFailed(s, be, err)
		return
	}
	s.held = c.Hold() // a graceful stop lets the connect finish: the session is in flight
	s.dialing = c
	c.SetContext(s)
	if v := b.ProxyProtocol; v != 0 {
		c.Write(appendProxyHeader(nil, v, s.client.RemoteAddr(), s.client.LocalAddr()))
	}
}

// connected pipes a session's client to the backend it connected to.
func (b *Balancer) connected(c *herd.Conn) {
	s := c.Context().(*session)
	be := s.be
	be.connectOK()
	s.dialing = nil
	s.held.Release()
	s.held = nil
	if s.client.Loop() != c.Loop() {
		// Worker.Scale moved the client while this connected: dial again
		// from where it is now (not the backend's fault).
		c.Abort()
		s.setTried(be, false)
		s.uncount()
		s.client.Post(func() { b.next(s) })
		return
	}
	// Pipe sends the early data only once it knows the client is still
	// there: a client the IdleTimeout closed while this connected gets
	// nothing sent on its behalf.
	err := herd.Pipe(s.client, c, &herd.PipeOptions{
		Splice: b.Splice,
		AToB:   &be.bytesIn,
		BToA:   &be.bytesOut,
		OnDone: s.pipeDone,
		Early:  s.early,
	})
	s.early = nil
	if err != nil {
		// ErrConnClosed: the client left meanwhile (its OnClose took the
		// session out of the count already), and Pipe reset the backend.
		s.uncount()
		return
	}
	be.total.Add(1)
	if s.paused {
		s.client.ResumeRecv()
	}
}

// endpoint is a checked backend address in one spelling per endpoint, so
// that one backend cannot be listed twice under two: the scheme tcp://
// is the default, a port may be a service name or have leading zeros, an
// IP literal fixes the family whatever the scheme says, and host names
// are not case-sensitive.
func endpoint(addr string) string {
	scheme, rest, ok := strings.Cut(addr, "://")
	if !ok {
		scheme, rest = "tcp", addr
	}
	host, port, err := net.SplitHostPort(rest)
	if scheme == "unix" || err != nil {
		return addr
	}
	p, err := net.LookupPort("tcp", port)
	if err != nil {
		return addr
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		return netip.AddrPortFrom(ip.Unmap(), uint16(p)).String()
	}
	return scheme + "://" + strings.ToLower(host) + ":" + strconv.Itoa(p)
}

// localShortage reports whether a failed connect failed here, for want of
// descriptors, buffers or memory, rather than at the backend.
func localShortage(err error) bool {
	for _, e := range []error{syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// dialFailed counts a failed connect against its backend and tries the
// session on another.
func (b *Balancer) dialFailed(s *session, be *backend, err error) {
	s.dialing, s.held = nil, nil // the connection is closed: its Hold with it
	s.uncount()
	if errors.Is(err, herd.ErrWorkerClosed) {
		// The stop's time ran out: not the backend's fault. The stop
		// closes the client too, with a reset, as a cut session.
		return
	}
	if localShortage(err) {
		// Out of descriptors or memory here: not the backend's fault, and
		// another backend would fare no better.
		b.localErrors.Add(1)
		s.client.Close()
		return
	}
	be.connectErrors.Add(1)
	b.failed(be, err)
	if s.closed {
		return
	}
	if s.retries++; s.retries > b.retries {
		b.noServer.Add(1)
		s.client.Close()
		return
	}
	b.next(s)
}
