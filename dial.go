//go:build linux || darwin || freebsd

package herd

// Outbound connections: a loop dials without blocking (Workerman's
// AsyncTcpConnection), and the connection it gets is a Conn like an
// accepted one, served by the Dialer's callbacks instead of the Worker's.

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/seed358e4494/herd/internal/poll"
	"github.com/seed358e4494/herd/internal/sock"
	"github.com/seed358e4494/herd/protocol"
)

// DefaultDialTimeout bounds a connect when Dialer.Timeout is zero.
const DefaultDialTimeout = 10 * time.Second

// A Dialer says how a loop connects out and serves what it connects: its
// callbacks play the Worker's part for the connections it makes, and run
// on the loop that dialed. One Dialer may serve any number of dials, from
// any loop; do not change it while it does.
type Dialer struct {
	// Protocol cuts the stream into messages for OnMessage; nil is raw.
	Protocol protocol.Protocol
	// Timeout bounds the connect (after any name lookup); zero means
	// DefaultDialTimeout.
	Timeout time.Duration
	// Reconnect, when Initial is set, dials again after a connect fails
	// or the connection ends by any cause but this side's Close or Abort,
	// until the dial's context ends (Workerman's reconnect). Each new
	// connection is a new Conn, given to OnConnect.
	Reconnect Backoff

	// OnConnect runs once the connection is established.
	OnConnect func(c *Conn)
	// OnMessage receives each message (or each read, without a Protocol);
	// msg is valid only until it returns.
	OnMessage func(c *Conn, msg []byte)
	// OnClose runs once a connection that OnConnect ran for has closed.
	OnClose func(c *Conn)
	// OnError reports a failed connect (a *net.OpError naming the address
	// and the cause; OnClose does not follow, since no connection was made)
	// and the faults the Worker's OnError reports. A connect the worker's
	// stop ends (one not held: see Conn.Hold) fails with ErrWorkerClosed.
	OnError func(c *Conn, err error)
	// OnBufferFull and OnBufferDrain are the Worker's, for these
	// connections.
	OnBufferFull  func(c *Conn)
	OnBufferDrain func(c *Conn)
}

// Backoff is the wait before each new attempt: Initial, doubling up to
// Max (Max zero: 30 seconds), each with up to a fifth more at random so
// that many clients do not come back at once. A connection that stayed up
// for Max starts again from Initial.
type Backoff struct {
	Initial, Max time.Duration
}

func (b Backoff) limit() time.Duration {
	if b.Max <= 0 {
		return 30 * time.Second
	}
	return b.Max
}

func (b Backoff) delay(attempt int) time.Duration {
	limit := b.limit()
	d := b.Initial
	for i := 0; i < attempt && d < limit; i++ {
		d *= 2
	}
	d = min(d, limit)
	return d + rand.N(d/5+1)
}

// dialState is what a dialed connection keeps of its dial.
type dialState struct {
	d        *Dialer
	ctx      context.Context
	network  string // "tcp", "tcp4", "tcp6" or "unix"
	host     string
	port     string
	path     string        // a unix socket's
	attempt  int           // consecutive failed attempts, for Reconnect
	sa       unix.Sockaddr // where to connect, once known (or err)
	err      error
	timer    *Timer // the connect timeout, on the connection's loop
	deadline int64  // of the connect, unix nanoseconds
	stopCtx  func() bool
	upSince  int64 // loop clock when it connected
}

// Dial connects to addr from the loop: "host:port" or tcp://host:port
// (tcp4://, tcp6:// to choose the family), or unix:///path. It returns at
// once with the connection, which connects in the background: data
// written before it is established is queued, and OnConnect runs once it
// is. A host name is looked up off the loop. ctx bounds the connect, as
// the Dialer's Timeout does, and ends its reconnects; once connected, the
// connection outlives it. An address that cannot be parsed is an error
// here (so is a port that is not one: 0, out of range, not a service
// name); a failed connect, or a name that does not resolve, goes to the
// Dialer's OnError.
//
// Connections a loop dials count in its Stats (Dialed, DialFailed,
// Active, Closed), not towards the Worker's MaxConns, and close with the
// Worker like its own. Dial is safe from any goroutine; a connection
// dialed from a loop's callback is served by that loop, which is what
// Pipe needs.
func (l *Loop) Dial(ctx context.Context, addr string, d *Dialer) (*Conn, error) {
	if ctx == nil {
		ctx = context.Background()
	}
	ds := &dialState{d: d, ctx: ctx}
	var err error
	if ds.network, ds.host, ds.port, ds.path, err = parseDialAddr(addr); err != nil {
		return nil, err
	}
	return l.dial(ds), nil
}

// CheckDialAddr reports whether Loop.Dial would take addr, with the error
// it would return: for a configuration to be checked before anything
// dials (the balancer's backends, say). It looks nothing up on the
// network: a host name that does not resolve passes (see
// LookupDialAddr).
func CheckDialAddr(addr string) error {
	_, _, _, _, err := parseDialAddr(addr)
	return err
}

// LookupDialAddr is CheckDialAddr, and also looks up addr's host name, if
// it has one, for the address family its scheme asks for: a name that
// does not resolve now is an error (ctx bounds the lookup). Loop.Dial
// still looks the name up at each dial, so a configuration checked at
// start follows the name's later changes.
func LookupDialAddr(ctx context.Context, addr string) error {
	network, host, _, _, err := parseDialAddr(addr)
	if err != nil || network == "unix" {
		return err
	}
	if _, err := netip.ParseAddr(host); err == nil {
		return nil
	}
	family := "ip" + strings.TrimPrefix(network, "tcp") // ip, ip4 or ip6
	if _, err := net.DefaultResolver.LookupNetIP(ctx, family, host); err != nil {
		return fmt.Errorf("herd: dial %q: %w", addr, err)
	}
	return nil
}

// parseDialAddr splits a Dial address.
func parseDialAddr(addr string) (network, host, port, path string, err error) {
	scheme, rest, ok := strings.Cut(addr, "://")
	if !ok {
		scheme, rest = "tcp", addr
	}
	switch scheme {
	case "unix":
		if rest == "" {
			return "", "", "", "", fmt.Errorf("herd: dial %q: empty unix socket path", addr)
		}
		return "unix", "", "", rest, nil
	case "tcp", "tcp4", "tcp6":
	default:
		return "", "", "", "", fmt.Errorf("herd: dial %q: unknown scheme %q (want tcp, tcp4, tcp6 or unix)", addr, scheme)
	}
	host, port, err = net.SplitHostPort(rest)
	if err != nil {
		return "", "", "", "", fmt.Errorf("herd: dial %q: %w", addr, err)
	}
	if host == "" {
		return "", "", "", "", fmt.Errorf("herd: dial %q: no host", addr)
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		// A literal of the other family would fail every connect.
		if v4 := ip.Unmap().Is4(); scheme == "tcp4" && !v4 || scheme == "tcp6" && v4 && !ip.Is4In6() {
			return "", "", "", "", fmt.Errorf("herd: dial %q: %s is not an address for %s", addr, host, scheme)
		}
	}
	// A port out of range or a service name that is not one would fail
	// every connect: refuse it here, where a configuration is checked.
	if p, err := net.LookupPort("tcp", port); err != nil || p == 0 {
		return "", "", "", "", fmt.Errorf("herd: dial %q: invalid port %q", addr, port)
	}
	return scheme, host, port, "", nil
}

// dial makes the connection and starts its connect on the loop.
func (l *Loop) dial(ds *dialState) *Conn {
	c := &Conn{id: l.w.nextID.Add(1), fd: -1}
	c.loop.Store(l)
	c.rareLocked().dial = ds
	c.flags.Store(flagDialed | flagConnecting)
	resolved := func(sa unix.Sockaddr, err error) {
		ds.sa, ds.err = sa, err
		postConnect(c)
	}
	if ds.network == "unix" {
		resolved(&unix.SockaddrUnix{Name: ds.path}, nil)
		return c
	}
	if ip, err := netip.ParseAddr(ds.host); err == nil {
		resolved(inetSockaddr(ip, ds.port, ds.network))
		return c
	}
	go func() {
		family := "ip" + strings.TrimPrefix(ds.network, "tcp") // ip, ip4 or ip6
		ips, err := net.DefaultResolver.LookupNetIP(ds.ctx, family, ds.host)
		if err != nil {
			resolved(nil, err)
			return
		}
		resolved(inetSockaddr(ips[0], ds.port, ds.network))
	}()
	return c
}

// inetSockaddr is ip and port as a socket address, or an error if the
// port is not a number or ip is not of the family network asks for.
func inetSockaddr(ip netip.Addr, port, network string) (unix.Sockaddr, error) {
	p, err := net.LookupPort("tcp", port)
	if err != nil {
		return nil, err
	}
	ip = ip.Unmap()
	switch {
	case ip.Is4() && network != "tcp6":
		return &unix.SockaddrInet4{Port: p, Addr: ip.As4()}, nil
	case ip.Is6() && network != "tcp4":
		sa := &unix.SockaddrInet6{Port: p, Addr: ip.As16()}
		if z := ip.Zone(); z != "" {
			if ifi, err := net.InterfaceByName(z); err == nil {
				sa.ZoneId = uint32(ifi.Index)
			}
		}
		return sa, nil
	}
	return nil, fmt.Errorf("address %s is not %s", ip, network)
}

// connect starts the non-blocking connect, on the connection's loop.
func (l *Loop) connect(c *Conn) {
	if l.heirs != nil {
		// The loop is leaving (Scale): the connection starts on an heir.
		c.loop.Store(leastActive(l.heirs))
		postConnect(c)
		return
	}
	ds := c.rare.dial
	sa, err := ds.sa, ds.err
	ds.sa, ds.err = nil, nil
	l.dialed.Add(1)
	l.active.Add(1)
	if c.state.Load() == connClosed || (c.state.Load() != connOpen && c.queueEmpty()) ||
		(l.draining && (c.holds.Load() == 0 || l.forced || l.exiting)) {
		// Closed or aborted before it began, or the worker stops (a held
		// connect goes on, unless the stop is forced or the loop has
		// stopped: see Hold).
		var err error
		if c.state.Load() == connOpen {
			err = ErrWorkerClosed
		}
		l.dialFailedNow(c, err)
		return
	}
	if err == nil {
		var fd int
		fd, err = connectSocket(sa)
		if err == nil {
			c.fd = int32(fd)
			if err = l.poller.AddConnecting(fd); err != nil {
				sock.Close(fd)
				c.fd = -1
			}
		}
	}
	if err != nil {
		l.dialFailedNow(c, err)
		return
	}
	c.lastActive = l.now.UnixNano()
	l.attach(c)
	timeout := ds.d.Timeout
	if timeout <= 0 {
		timeout = DefaultDialTimeout
	}
	ds.deadline = l.now.Add(timeout).UnixNano()
	l.armConnectTimeout(c)
	if ds.ctx.Done() != nil {
		ds.stopCtx = context.AfterFunc(ds.ctx, func() {
			c.Post(func() {
				if c.flags.Load()&flagConnecting != 0 {
					c.loop.Load().closeConn(c, ds.ctx.Err())
				}
			})
		})
	}
}

// armConnectTimeout closes the connection at its connect deadline, if it
// has not connected by then.
func (l *Loop) armConnectTimeout(c *Conn) {
	ds := c.rare.dial
	ds.timer = l.addTimer(time.Duration(ds.deadline-l.now.UnixNano()), 0, func() {
		if c.flags.Load()&flagConnecting != 0 && c.state.Load() != connClosed {
			l.closeConn(c, os.NewSyscallError("connect", unix.ETIMEDOUT))
		}
	})
}

// postConnect has the connection's loop start its connect. A loop that
// has left (Scale) takes no more tasks: then one of its heirs does. Once
// the worker has stopped, the dial is dropped (nothing could serve it).
func postConnect(c *Conn) {
	for {
		if c.post(task{kind: taskDial, c: c}) {
			return
		}
		// A refused post saw the loop closed under its task lock, after
		// leave set heirs: reading them here is safe.
		l := c.loop.Load()
		if l.heirs == nil {
			l.w.logger().Debug("herd: dial after the worker stopped", "addr", c.rare.dial.addr())
			return
		}
		c.loop.Store(leastActive(l.heirs))
	}
}

// connectSocket opens a non-blocking socket and starts connecting it.
func connectSocket(sa unix.Sockaddr) (int, error) {
	domain := unix.AF_INET
	switch sa.(type) {
	case *unix.SockaddrInet6:
		domain = unix.AF_INET6
	case *unix.SockaddrUnix:
		domain = unix.AF_UNIX
	}
	fd, err := sock.Socket(domain)
	if err != nil {
		return -1, err
	}
	if domain != unix.AF_UNIX {
		// Before the connect: one system call, as after it.
		sock.SetNoDelay(fd)
	}
	for {
		err = sock.Connect(fd, sa)
		if err != unix.EINTR {
			break
		}
	}
	if err != nil && err != unix.EINPROGRESS {
		sock.Close(fd)
		return -1, os.NewSyscallError("connect", err)
	}
	return fd, nil // even a connect done at once is reported writable
}

// connected handles the readiness event of a connection being dialed: its
// connect succeeded or failed.
func (l *Loop) connected(c *Conn, failed bool) {
	if failed {
		// A failed connect is reported as an error or a hang-up; a good
		// one as writable alone, which needs no SO_ERROR to tell.
		err := sock.PendingError(int(c.fd))
		if errno, ok := err.(unix.Errno); ok || err == nil {
			if err == nil {
				errno = unix.ECONNREFUSED
			}
			err = os.NewSyscallError("connect", errno)
		}
		l.closeConn(c, err)
		return
	}
	ds := c.rare.dial
	l.endConnect(ds)
	ds.upSince = l.now.UnixNano()
	c.lastActive = l.now.UnixNano()
	c.mu.Lock()
	c.flags.And(^flagConnecting)
	c.readOn, c.writeOn = poll.EdgeTriggered, true // as connect registered it
	c.updateInterestLocked()
	c.mu.Unlock()
	if ds.d.OnConnect != nil {
		// Even after a Close that left bytes queued: the connection is
		// made, and OnClose follows.
		l.callConn(ds.d.OnConnect, c)
	}
	if c.state.Load() == connClosed {
		return
	}
	if c.flags.Load()&(flagWriteShut|flagBroken) == flagWriteShut && c.queueEmpty() {
		c.shutWrite() // not if aborted meanwhile: its reset follows
	}
	if c.state.Load() == connClosing && c.queueEmpty() {
		l.queueEmptied(c) // closed while connecting, with nothing to send
	}
	if l.draining && l.heirs == nil && c.state.Load() == connOpen {
		l.stopConn(c) // a held connect the worker's graceful stop let finish
	}
}

// endConnect stops the connect's timeout and context watch, on the loop.
func (l *Loop) endConnect(ds *dialState) {
	if ds.timer != nil {
		l.stopTimer(ds.timer)
		ds.timer = nil
	}
	if ds.stopCtx != nil {
		ds.stopCtx()
		ds.stopCtx = nil
	}
}

// dialFailedNow ends a connect that failed before the socket was watched.
func (l *Loop) dialFailedNow(c *Conn, err error) {
	c.mu.Lock()
	c.dropQueueLocked()
	c.state.Store(connClosed)
	c.mu.Unlock()
	l.active.Add(-1)
	l.closedConns.Add(1)
	l.dialEnded(c, false, err)
}

// dialEnded follows a dialed connection's end: a connect that failed
// (connected false; err, if any, goes to OnError) or a connection that
// closed. It dials again if the Dialer says so.
func (l *Loop) dialEnded(c *Conn, connected bool, err error) {
	ds := c.rare.dial
	l.endConnect(ds)
	if !connected {
		l.dialFailed.Add(1)
		if err != nil {
			var op *net.OpError
			if !errors.As(err, &op) {
				err = &net.OpError{Op: "dial", Net: ds.network, Addr: ds.netAddr(), Err: err}
			}
			l.callError(c, err)
		}
	}
	b := ds.d.Reconnect
	if b.Initial <= 0 || c.flags.Load()&flagSelfEnd != 0 || ds.ctx.Err() != nil || (l.draining && l.heirs == nil) {
		return
	}
	if connected && time.Duration(l.now.UnixNano()-ds.upSince) >= b.limit() {
		ds.attempt = 0 // it stayed up: not a server that drops each connection
	}
	wait := b.delay(ds.attempt)
	next := &dialState{d: ds.d, ctx: ds.ctx, network: ds.network, host: ds.host, port: ds.port, path: ds.path, attempt: ds.attempt + 1}
	if l.heirs != nil {
		l = leastActive(l.heirs) // this loop is leaving (Scale)
	}
	l.AfterFunc(wait, func() {
		if ds.ctx.Err() == nil && !(l.draining && l.heirs == nil) {
			l.dial(next)
		}
	})
}

// addr is the dialed address, for logs and errors.
func (ds *dialState) addr() string {
	if ds.network == "unix" {
		return ds.path
	}
	return net.JoinHostPort(ds.host, ds.port)
}

// netAddr is the dialed address as a net.Addr, for a *net.OpError.
func (ds *dialState) netAddr() net.Addr {
	if ds.network == "unix" {
		return &net.UnixAddr{Name: ds.path, Net: "unix"}
	}
	return dialedAddr(ds.addr())
}

// dialedAddr is a TCP address as it was given (a host name, not yet
// looked up, has no *net.TCPAddr).
type dialedAddr string

func (dialedAddr) Network() string  { return "tcp" }
func (a dialedAddr) String() string { return string(a) }

// dialer is the Dialer serving a connection the loop dialed, or nil.
func (c *Conn) dialer() *Dialer {
	if c.flags.Load()&flagDialed == 0 {
		return nil
	}
	return c.rare.dial.d
}

// callbacks are what serves a connection's input and events: its Dialer's
// for a connection a loop dialed (the Dialer plays the Worker's part for
// it), else the Worker's. OnConnect is not among them: the two begin
// differently (an accept, a connect completed).
type callbacks struct {
	proto         protocol.Protocol
	onMessage     func(*Conn, []byte)
	onClose       func(*Conn)
	onError       func(*Conn, error)
	onBufferFull  func(*Conn)
	onBufferDrain func(*Conn)
}

// callbacks gives c's callbacks; w is its Worker. Read at each use, not
// copied once, as the Worker's fields always were.
func (c *Conn) callbacks(w *Worker) callbacks {
	if d := c.dialer(); d != nil {
		return callbacks{d.Protocol, d.OnMessage, d.OnClose, d.OnError, d.OnBufferFull, d.OnBufferDrain}
	}
	return callbacks{w.proto, w.OnMessage, w.OnClose, w.OnError, w.OnBufferFull, w.OnBufferDrain}
}
