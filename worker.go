//go:build linux || darwin || freebsd

package herd

// The Worker: its settings (Workerman's fields and callbacks), Listen's
// checks, Run and Shutdown. Its loops are in loop.go and their figures in
// stats.go; Scale in scale.go; signals and readiness in runall.go;
// sockets taken from or lent to another process in handover.go (package
// upgrade builds upgrades on them).

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/seed358e4494/herd/internal/sock"
	"github.com/seed358e4494/herd/protocol"
)

// Errors reported by a Worker. Test for them with errors.Is.
var (
	// ErrWorkerClosed is returned by Run and Listen once Shutdown was called
	// or a previous Run has stopped.
	ErrWorkerClosed = errors.New("herd: worker closed")
	// ErrRunning is returned by a second Run on the same Worker.
	ErrRunning = errors.New("herd: worker already running")
	// ErrPackageTooLarge reaches OnError when a packet exceeds
	// MaxPackageSize; the connection is then closed.
	ErrPackageTooLarge = errors.New("herd: package exceeds MaxPackageSize")
	// ErrSendBufferFull reaches OnError when Send drops a message because
	// the connection's send queue is at MaxSendBufferSize.
	ErrSendBufferFull = errors.New("herd: send buffer full, message dropped")
	// ErrConnClosed is returned by Conn.Write and Conn.WaitWritable once
	// the connection is closing or closed: nothing more can be sent. It
	// wraps net.ErrClosed, so errors.Is(err, net.ErrClosed) holds for it
	// as for a closed net.Conn.
	ErrConnClosed = fmt.Errorf("herd: connection closing or closed: %w", net.ErrClosed)
	// ErrPanic wraps a panic recovered from a callback; the connection it
	// concerned is closed and the loop goes on.
	ErrPanic = errors.New("herd: panic in callback")
)

// Defaults for zero-valued Worker fields.
const (
	DefaultMaxPackageSize    = 10 << 20 // Workerman's default too
	DefaultMaxSendBufferSize = 1 << 20  // Workerman's default too
	DefaultStopTimeout       = 2 * time.Second
)

// A Worker listens on one address and serves it with Count event loops.
// Configure it through its fields before Run; they must not change after.
// The zero value with Addr set serves raw TCP on one loop per CPU with
// shared accept.
type Worker struct {
	// Name appears in logs and Stats.
	Name string
	// Addr is "scheme://address": tcp://host:port (raw stream, or Protocol),
	// text://host:port and frame://host:port (TCP with that protocol),
	// unix:///path/to.sock, udp://host:port (datagrams, to OnPacket).
	// IPv6 hosts go in brackets: tcp://[::1]:9000.
	// An empty host (tcp://:9000) listens on every IPv4 address; use
	// tcp://[::]:9000 for IPv6. Port 0 picks a free port; ListenAddr tells
	// which. A unix socket file left by a dead process is replaced; one a
	// live process listens on is an error. An address without a scheme
	// (host:port) is tcp://.
	Addr string
	// Protocol cuts the stream into messages: one of your own (the built-in
	// ones have their schemes, text:// and frame://, as in Workerman), on a
	// tcp:// or unix:// address. Setting it with a scheme that names a
	// protocol is an error. Nil with tcp:// or unix:// is raw: OnMessage
	// gets whatever each read returned.
	Protocol protocol.Protocol
	// Count is the number of event loops. Zero means runtime.GOMAXPROCS(0).
	Count int
	// ReusePort gives every loop its own listening socket in a SO_REUSEPORT
	// group, and the kernel spreads new connections over them. Where the
	// kernel does not balance such groups (macOS, Unix sockets) herd falls
	// back to AcceptShared and logs it once. It is a listen mode of its
	// own: with Accept set to anything but AcceptShared, Run fails.
	ReusePort bool
	// JoinReusePort lets a ReusePort worker join a SO_REUSEPORT group that
	// another process (or another Worker) already listens in, and then
	// leaves the choice of socket to the kernel's hash. Without it, Listen
	// refuses a port someone else listens on, so that a second instance
	// started by mistake does not take half of the connections. The check
	// is a probe before binding: two processes calling Listen at the same
	// instant can both pass it. Set it in every process sharing the port
	// on purpose: one without it steers the whole group by its own count
	// of loops, and the others' loops go short. Sockets handed over by an
	// upgrade or by systemd are this worker's own either way.
	JoinReusePort bool
	// Accept chooses how connections reach loops without ReusePort.
	Accept AcceptMode
	// LockOSThread runs each loop on an OS thread of its own
	// (runtime.LockOSThread): for callbacks that use thread state, such as
	// some cgo libraries, and for Stats' ThreadSwitches. Off, a loop with
	// nothing to do lets the Go scheduler run other goroutines before it
	// sleeps, which costs less CPU per connection (see bench/README.md).
	LockOSThread bool
	// MaxPackageSize is the largest packet the Protocol may frame; a larger
	// one reaches OnError as ErrPackageTooLarge and the connection closes.
	// Zero means DefaultMaxPackageSize. It bounds the input buffered per
	// connection.
	MaxPackageSize int
	// MaxSendBufferSize bounds each connection's send queue. A Send that
	// finds it full is dropped (OnError with ErrSendBufferFull, counted in
	// Stats). Zero means DefaultMaxSendBufferSize; negative means unlimited.
	MaxSendBufferSize int
	// Backpressure stops reading from a connection while its send queue
	// holds more than half of MaxSendBufferSize, and resumes once it is
	// down to an eighth (of 1 MiB when MaxSendBufferSize is unlimited): a
	// peer that does not read then cannot make the server queue without
	// bound, and nothing is dropped.
	Backpressure bool
	// IdleTimeout closes (with Close) connections that have sent nothing
	// for this long (resets those piped in mid-stream, see Pipe), and
	// aborts closing connections whose queue has not
	// moved for as long. A held connection (Conn.Hold) is not idle while
	// its reply is being made; it is aborted only if that reply is queued
	// and its peer has taken nothing of it for IdleTimeout. Zero means
	// never.
	IdleTimeout time.Duration
	// MaxConns bounds open connections over all loops; connections beyond
	// it are closed at once and counted in Stats.Rejected. Zero means no
	// bound beyond the process's file limit.
	MaxConns int
	// StopTimeout bounds the graceful stop that Run starts when its context
	// ends. Zero means DefaultStopTimeout.
	StopTimeout time.Duration
	// LingerTimeout bounds how long a closing connection waits for its
	// peer to end its side, or for a send queue that has stopped
	// shrinking (longer while the peer is still taking data), before it is
	// aborted. Zero means StopTimeout's value.
	LingerTimeout time.Duration
	// Logger receives the worker's logs. Nil means slog.Default().
	Logger *slog.Logger

	// TLS, when set, serves TLS on every connection (https, wss, or a
	// protocol of your own over TLS), with crypto/tls: the handshake runs
	// off the loop, OnConnect runs once it is done, and from then on the
	// loop decrypts what arrives and encrypts what is sent, with no
	// goroutine per connection. A graceful close sends close_notify. A
	// failed handshake closes the connection, is counted in Stats
	// (TLSFailed) and logged at debug level; OnConnect, OnError and
	// OnClose do not run for it. Set NextProtos to "http/1.1" for ALPN,
	// and GetCertificate to reload certificates without a restart.
	//
	// What a client costs before its handshake is over: until its
	// ClientHello has come whole (16 KiB at most), nothing but its socket
	// and what it sent (about 1.2 KB of state); no goroutine, no
	// tls.Conn. Then a goroutine runs its handshake; at most
	// MaxHandshakes of them compute at once, and one that waits for its
	// client's next flight gives its place to the next handshake, so that
	// neither silent clients nor clients that stall after their hello
	// keep honest ones waiting. What a connection may hold unread is
	// bounded by HandshakeInputLimit, over the worker by
	// HandshakeInputBudget. A client that sent a whole ClientHello and
	// then stalls keeps its goroutine and its tls.Conn (15 to 26 KB) until
	// HandshakeTimeout, and crypto/tls may buffer one handshake message of
	// its (up to 64 KiB, 256 KiB for a certificate chain) meanwhile: what
	// net/http with crypto/tls spends on every connection from the
	// accept, whatever the client sends. Input that is not a TLS
	// handshake closes the connection; an HTTP request is answered as
	// net/http answers it, "400 Bad Request: Client sent an HTTP request
	// to an HTTPS server", before the close.
	TLS *tls.Config
	// HandshakeTimeout bounds a TLS handshake from the accept: a client
	// that has not completed it by then is closed. Zero means
	// DefaultHandshakeTimeout.
	HandshakeTimeout time.Duration
	// MaxHandshakes bounds the TLS handshakes computing at once (each on
	// a goroutine); the others wait their turn within their
	// HandshakeTimeout. A handshake waiting for its client keeps its
	// goroutine but not its place. Zero means DefaultMaxHandshakes.
	MaxHandshakes int

	// Callbacks. All run on the loop that owns the connection and must not
	// block it; hand long work to a goroutine, which may call Send.
	// A callback that panics closes its connection; the loop goes on.

	// OnWorkerStart runs on each loop before it serves connections.
	OnWorkerStart func(l *Loop)
	// OnWorkerStop runs on each loop once, after its last connection closed.
	OnWorkerStop func(l *Loop)
	// OnConnect runs when a connection has been accepted.
	OnConnect func(c *Conn)
	// OnMessage receives each message. msg is valid only until OnMessage
	// returns: copy what you keep.
	OnMessage func(c *Conn, msg []byte)
	// OnClose runs once per connection, after it has closed.
	OnClose func(c *Conn)
	// OnError reports a fault on a connection: a malformed stream,
	// ErrPackageTooLarge, ErrSendBufferFull, a failed write, a panic.
	OnError func(c *Conn, err error)
	// OnBufferFull runs when the send queue reaches MaxSendBufferSize.
	OnBufferFull func(c *Conn)
	// OnBufferDrain runs when a send queue that was full has been written
	// out completely.
	OnBufferDrain func(c *Conn)
	// OnPacket receives each datagram of a udp:// worker, decoded by the
	// Protocol if there is one (one datagram is one message). p and msg
	// are valid only until it returns; p.Reply answers the sender.
	OnPacket func(p *Packet, msg []byte)

	mu                       sync.Mutex
	state                    workerState
	ep                       endpoint
	proto                    protocol.Protocol
	listeners                []int         // one per loop with reuseport, else one
	mode                     AcceptMode    // as resolved: acceptReusePort, or Accept
	exclusive                bool          // shared listeners are registered with EPOLLEXCLUSIVE
	shared                   *sharedAccept // AcceptRoundRobin, AcceptLeastConns: the loops' turns
	loops                    []*Loop       // serving now, by Index
	departing                []*Loop       // left by Scale, not yet exited
	running                  sync.WaitGroup
	scaleMu                  sync.Mutex // serializes Scale
	sc                       scaleState
	stopping                 chan struct{} // closed by Shutdown
	done                     chan struct{} // closed when Run has stopped everything
	runErr                   error
	log                      *slog.Logger
	nextID                   atomic.Uint64
	conns                    atomic.Int64 // open connections over all loops
	rejected                 atomic.Uint64
	rests, restsWarned       atomic.Uint64 // accept pauses for want of resources, and how many were reported
	restWarned               atomic.Int64  // unix nanoseconds of the last report
	loopsAdded, loopsRemoved atomic.Uint64
	hsOnce                   sync.Once
	hs                       *handshaker
	hsInput                  atomic.Int64 // bytes TLS connections hold unread during their handshakes
	count                    int          // loops, Count resolved
	boundPath                bool         // this worker bound the unix socket file: it removes it at the end
	inheritedListeners       bool         // Listen took sockets handed over (upgrade, systemd)
	handedOver               bool         // the listeners went to an upgrade's child, which owns the socket file now
	lent                     bool         // a Handover is open: Scale refuses (ErrLent)
	listenRefs               atomic.Int32 // loops still watching the listeners
	maxPkg                   int
	maxSend                  int
	stopGrace                time.Duration
	lingerFor                time.Duration
	claimedBy                string // who Claim gave the connections to
}

type workerState int

const (
	stateNew workerState = iota
	stateListening
	stateRunning
	stateClosed
)

func (w *Worker) logger() *slog.Logger {
	if w.log != nil {
		return w.log
	}
	if w.Logger != nil {
		return w.Logger
	}
	return slog.Default()
}

// Listen binds the address without serving it yet, so that ListenAddr is
// known before Run (port 0). Run calls it when it has not been called.
// Once the worker listens, Listen and ListenFiles do nothing.
func (w *Worker) Listen() error {
	_, err := w.listen(nil)
	return err
}

// listen binds the address, or serves those of files bound to it (see
// ListenFiles), and returns the files it serves.
func (w *Worker) listen(files []*os.File) ([]*os.File, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	switch w.state {
	case stateClosed:
		return nil, ErrWorkerClosed
	case stateNew:
	default:
		return nil, nil
	}
	if err := w.configure(); err != nil {
		return nil, err
	}
	n := 1
	if w.mode == acceptReusePort {
		n = w.count
	}
	ep := w.ep
	// Sockets the process holds already come first: connections waiting
	// in their queues are served.
	listeners, used, err := adopt(ep, files)
	if err != nil {
		return nil, err
	}
	w.listeners = listeners
	if len(w.listeners) > 0 {
		w.inheritedListeners = true
		if w.mode == acceptReusePort {
			if !sock.InReusePortGroup(w.listeners[0]) {
				// No group to join (a socket systemd made without
				// ReusePort=yes): all loops share it.
				w.logger().Info("herd: the inherited socket is not in a SO_REUSEPORT group; using shared accept", "addr", w.Addr)
				w.mode, w.exclusive = AcceptShared, true
				n = 1
			}
		}
		if w.mode != acceptReusePort && len(w.listeners) > 1 {
			// One listener serves this mode; the others were a ReusePort
			// group's, and their queues go with them.
			w.logger().Warn("herd: inherited more listeners than this listen mode uses; closing the rest", "addr", w.Addr, "inherited", len(w.listeners))
			for _, fd := range w.listeners[1:] {
				sock.Close(fd)
			}
			w.listeners, used = w.listeners[:1], used[:1]
		}
		sa, err := sock.Bound(w.listeners[0])
		if err != nil {
			w.closeListeners()
			return nil, err
		}
		ep.sa = sa
	}
	if len(w.listeners) == 0 && w.mode == acceptReusePort && !w.JoinReusePort {
		if err := sock.ProbeOwner(ep.bind()); err != nil {
			return nil, err
		}
	}
	for i := len(w.listeners); i < n; i++ {
		fd, err := sock.Listen(ep.bind(), w.mode == acceptReusePort)
		if err != nil {
			w.closeListeners()
			return nil, err
		}
		w.listeners = append(w.listeners, fd)
		if i == 0 && ep.network != "unix" {
			// Port 0: the other members of the group bind the port the
			// first one got.
			sa, err := sock.Bound(fd)
			if err != nil {
				w.closeListeners()
				return nil, err
			}
			ep.sa = sa
		}
	}
	w.ep = ep // with the port bound: Scale's new sockets join this group, not a new port
	w.state = stateListening
	w.boundPath = ep.path != "" && !w.inheritedListeners // an inherited socket's file is its owner's
	w.logger().Info("herd: listening", "addr", w.listenAddrLocked(), "loops", w.count, "mode", w.mode.String(), "inherited", w.inheritedListeners)
	return used, nil
}

// configure validates the fields and resolves defaults and the listen mode.
func (w *Worker) configure() error {
	ep, err := parseAddr(w.Addr)
	if err != nil {
		return err
	}
	if err := w.checkShape(ep); err != nil {
		return err
	}
	w.ep = ep
	w.proto = w.Protocol
	if w.proto == nil {
		w.proto = ep.proto
	} else if ep.proto != nil {
		return fmt.Errorf("herd: address %q names a protocol and Worker.Protocol is set too", w.Addr)
	}
	for _, f := range []struct {
		name     string
		value    any
		negative bool
	}{
		{"Count", w.Count, w.Count < 0}, {"MaxPackageSize", w.MaxPackageSize, w.MaxPackageSize < 0},
		{"MaxConns", w.MaxConns, w.MaxConns < 0}, {"IdleTimeout", w.IdleTimeout, w.IdleTimeout < 0},
		{"StopTimeout", w.StopTimeout, w.StopTimeout < 0}, {"LingerTimeout", w.LingerTimeout, w.LingerTimeout < 0},
	} {
		if f.negative {
			return fmt.Errorf("herd: Worker.%s is %v: must not be negative", f.name, f.value)
		}
	}
	w.count = w.Count
	if w.count == 0 {
		w.count = runtime.GOMAXPROCS(0)
	}
	w.maxPkg = w.MaxPackageSize
	if w.maxPkg == 0 {
		w.maxPkg = DefaultMaxPackageSize
	}
	w.maxSend = w.MaxSendBufferSize
	if w.maxSend == 0 {
		w.maxSend = DefaultMaxSendBufferSize
	}
	w.stopGrace = w.StopTimeout
	if w.stopGrace == 0 {
		w.stopGrace = DefaultStopTimeout
	}
	w.lingerFor = w.LingerTimeout
	if w.lingerFor == 0 {
		w.lingerFor = w.stopGrace
	}
	w.log = w.Logger
	if w.log == nil {
		w.log = slog.Default()
	}
	if w.Name != "" {
		w.log = w.log.With("worker", w.Name)
	}
	switch w.Accept {
	case AcceptShared, AcceptRoundRobin, AcceptLeastConns:
	default:
		return fmt.Errorf("herd: unknown Accept mode %d", w.Accept)
	}
	if w.ReusePort && w.Accept != AcceptShared {
		return fmt.Errorf("herd: ReusePort and Accept %s are two listen modes; set one", w.Accept)
	}
	w.mode = w.Accept
	if ep.network == "udp" {
		if w.Accept != AcceptShared {
			return fmt.Errorf("herd: a udp:// worker has no connections to dispatch (Accept %s)", w.Accept)
		}
		// A socket per loop, the kernel choosing a datagram's loop by
		// its addresses; one shared socket where groups are not balanced.
		if sock.ReusePortBalances {
			w.mode = acceptReusePort
		}
		w.exclusive = w.mode == AcceptShared
		w.stopping = make(chan struct{})
		w.done = make(chan struct{})
		return nil
	}
	if w.ReusePort {
		switch {
		case ep.network != "tcp":
			w.log.Info("herd: ReusePort does not apply to unix sockets; using shared accept")
		case !sock.ReusePortBalances:
			w.log.Info("herd: this kernel does not balance SO_REUSEPORT groups; using shared accept", "os", runtime.GOOS)
		default:
			w.mode = acceptReusePort
		}
	}
	// One loop wakes per connection on a shared listener (Linux; kqueue
	// has no such flag and wakes them all).
	w.exclusive = w.mode != acceptReusePort
	w.stopping = make(chan struct{})
	w.done = make(chan struct{})
	return nil
}

// ListenAddr is the bound address once Listen or Run has bound it, else nil.
func (w *Worker) ListenAddr() Addr {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.listenAddrLocked()
}

// Addr is a listening address: a *net.TCPAddr, *net.UnixAddr or
// *net.UDPAddr.
type Addr = interface {
	Network() string
	String() string
}

func (w *Worker) listenAddrLocked() Addr {
	if len(w.listeners) == 0 {
		return nil
	}
	sa, err := sock.Bound(w.listeners[0])
	if err != nil {
		return nil
	}
	if w.ep.network == "udp" {
		return udpAddr(sock.PeerFromSockaddr(sa))
	}
	return sock.NetAddr(sa)
}

// closeListeners closes the listening sockets (once) and removes the unix
// socket file this worker created. Called with w.mu held.
func (w *Worker) closeListeners() {
	for _, fd := range w.listeners {
		sock.Close(fd)
	}
	w.listeners = nil
	if w.boundPath && !w.handedOver {
		os.Remove(w.ep.path)
	}
	w.boundPath = false
}

// releaseListener is called by each loop once it no longer watches the
// listeners; the last one closes them, so that a
// draining worker stops taking connections it would never serve.
func (w *Worker) releaseListener() {
	if w.listenRefs.Add(-1) == 0 {
		w.mu.Lock()
		w.closeListeners()
		w.mu.Unlock()
	}
}

// Run serves until ctx ends or Shutdown is called, then returns nil once
// every loop has stopped. When ctx ends, Run stops gracefully as Shutdown
// does, giving connections StopTimeout to finish. It returns an error if the
// address cannot be bound or a loop fails, and ErrWorkerClosed if the worker
// was already shut down.
func (w *Worker) Run(ctx context.Context) error {
	if err := w.Listen(); err != nil {
		return err
	}
	w.mu.Lock()
	if st := w.state; st != stateListening {
		w.mu.Unlock()
		if st == stateRunning {
			return ErrRunning
		}
		return ErrWorkerClosed
	}
	w.state = stateRunning
	err := w.startLoops()
	if err != nil {
		w.teardownLocked()
		w.loops = nil // Shutdown: nothing ran
		w.mu.Unlock()
		close(w.done)
		return err
	}
	w.mu.Unlock()

	go func() {
		select {
		case <-ctx.Done():
			sctx, cancel := context.WithTimeout(context.Background(), w.stopGrace)
			defer cancel()
			w.Shutdown(sctx)
		case <-w.done:
		}
	}()

	w.running.Wait() // every loop, those Scale added too
	w.mu.Lock()
	w.teardownLocked()
	err = w.runErr
	w.mu.Unlock()
	close(w.done)
	return err
}

// teardownLocked closes what Run opened, once the loops have stopped (or
// failed to start): listeners, pollers. Called with w.mu held.
func (w *Worker) teardownLocked() {
	w.state = stateClosed
	w.closeListeners()
	for _, l := range append(w.loops, w.departing...) {
		l.poller.Close()
	}
}

// startLoops makes the pollers and starts one goroutine per loop. Called
// with w.mu held.
func (w *Worker) startLoops() error {
	w.loops = make([]*Loop, 0, w.count)
	for i := 0; i < w.count; i++ {
		l, err := newLoop(w, i)
		if err != nil {
			return err
		}
		w.loops = append(w.loops, l)
	}
	if w.mode.balanced() {
		w.shared = &sharedAccept{byConns: w.mode == AcceptLeastConns}
	}
	refs := int32(0)
	for i, l := range w.loops {
		var err error
		switch {
		case w.mode == acceptReusePort:
			// More listeners than loops (inherited from a process that
			// had more): the extra ones are watched too, so that the
			// connections the kernel hashes to them are served.
			for j := i; j < len(w.listeners) && err == nil; j += len(w.loops) {
				err = l.addListener(w.listeners[j], false)
			}
		default:
			err = l.addListener(w.listeners[0], w.exclusive)
		}
		if err != nil {
			return err
		}
		refs += int32(len(l.accs))
	}
	w.listenRefs.Store(refs)
	w.steerAtStart()
	w.shared.join(w.loops)
	for _, l := range w.loops {
		w.start(l)
	}
	return nil
}

// start runs the loop's goroutine. Called with w.mu held.
func (w *Worker) start(l *Loop) {
	l.started = time.Now()
	w.running.Add(1)
	go func() {
		defer w.running.Done()
		defer w.sc.onGoroutine(l)()
		l.run()
	}()
}

// Shutdown stops the worker gracefully: it stops accepting, reads what each
// connection has already delivered, answers it, flushes every send queue,
// closes each connection (after the peer has seen the end of the stream),
// runs OnWorkerStop on every loop, and returns once Run has returned. When
// ctx ends first, the remaining connections are closed at once and Shutdown
// returns ctx.Err() after Run has returned; those still open then (held,
// or a Stopper's stream in progress) are reset, since their streams are cut.
//
// A graceful stop waits for each peer to end its side of the stream, so a
// peer that never does holds it until ctx ends. Connections paused with
// PauseRecv are not read again. Shutdown waits for work a callback handed
// to another goroutine only where it called Conn.Hold; otherwise
// a Send that comes after its connection was closed is dropped. Shutdown
// waits for the loops, so a callback must not call it directly: use
// go w.Shutdown(ctx).
func (w *Worker) Shutdown(ctx context.Context) error {
	w.mu.Lock()
	switch w.state {
	case stateClosed:
		if w.loops == nil { // never ran, or failed to start
			w.mu.Unlock()
			return nil
		}
	case stateNew, stateListening:
		w.state = stateClosed
		w.closeListeners()
		if w.done != nil {
			close(w.done)
		}
		w.mu.Unlock()
		return nil
	}
	first := false
	select {
	case <-w.stopping:
	default:
		close(w.stopping)
		first = true
	}
	w.mu.Unlock()
	if first {
		w.stopAll(false)
	}
	select {
	case <-w.done:
		return nil
	case <-ctx.Done():
		w.stopAll(true)
		<-w.done
		return ctx.Err()
	}
}

// stopAll asks every loop to stop: gracefully, or at once when force is set.
func (w *Worker) stopAll(force bool) {
	w.mu.Lock()
	loops := append(append([]*Loop(nil), w.loops...), w.departing...)
	w.mu.Unlock()
	for _, l := range loops {
		l.post(task{kind: taskStop, force: force})
	}
}

// fail records a fatal loop error, returned by Run, and stops the others.
func (w *Worker) fail(err error) {
	w.mu.Lock()
	if w.runErr == nil {
		w.runErr = err
	}
	w.mu.Unlock()
	w.logger().Error("herd: loop failed; stopping the worker", "err", err)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), w.stopGrace)
		defer cancel()
		w.Shutdown(ctx)
	}()
}

// Loops returns the worker's loops while it runs (nil before Run and
// after it returned). With Loop.Post and Loop.Conns it walks every
// connection without a lock shared by the loops: each loop lists its own,
// on its own goroutine.
func (w *Worker) Loops() []*Loop {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.state != stateRunning {
		return nil
	}
	return append([]*Loop(nil), w.loops...)
}

// highWater and lowWater are the send-queue marks of Backpressure.
func (w *Worker) highWater() int { return w.backpressureBase() / 2 }
func (w *Worker) lowWater() int  { return w.backpressureBase() / 8 }

func (w *Worker) backpressureBase() int {
	if w.maxSend > 0 {
		return w.maxSend
	}
	return DefaultMaxSendBufferSize
}
