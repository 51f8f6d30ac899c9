//go:build linux || darwin || freebsd

package herd

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/seed358e4494/herd/internal/loopback"
	"github.com/seed358e4494/herd/protocol"
)

// dialWorker runs a one-loop worker that serves nothing of its own, for
// its loop to dial from.
func dialWorker(t *testing.T) (*Worker, *Loop) {
	t.Helper()
	var started atomic.Int32
	w := &Worker{Addr: "tcp://127.0.0.1:0", Count: 1, OnWorkerStart: func(*Loop) { started.Add(1) }}
	startWorker(t, w)
	return w, loopsOf(t, w, &started)[0]
}

// lineEchoServer is a goroutine-per-connection server echoing lines, the
// peer for outbound tests.
func lineEchoServer(t *testing.T, network, addr string) net.Listener {
	t.Helper()
	return serveConns(t, network, addr, func(c net.Conn) {
		br := bufio.NewReader(c)
		for {
			line, err := br.ReadBytes('\n')
			if err != nil {
				return
			}
			c.Write(line)
		}
	})
}

// serveConns listens on addr until the test ends and serves each
// connection with f on a goroutine of its own, closing it after.
func serveConns(t *testing.T, network, addr string, f func(c net.Conn)) net.Listener {
	t.Helper()
	ln, err := net.Listen(network, addr)
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				f(c)
			}()
		}
	}()
	return ln
}

// dialEvents records what a Dialer's callbacks saw.
type dialEvents struct {
	connects, closes atomic.Int32
	msgs             chan string
	errs             chan error
}

func newDialEvents() *dialEvents {
	return &dialEvents{msgs: make(chan string, 64), errs: make(chan error, 16)}
}

func (e *dialEvents) dialer() *Dialer {
	return &Dialer{
		Protocol:  protocol.Text{},
		OnConnect: func(*Conn) { e.connects.Add(1) },
		OnMessage: func(_ *Conn, msg []byte) { e.msgs <- string(msg) },
		OnClose:   func(*Conn) { e.closes.Add(1) },
		OnError:   func(_ *Conn, err error) { e.errs <- err },
	}
}

func (e *dialEvents) msg(t *testing.T) string {
	t.Helper()
	select {
	case m := <-e.msgs:
		return m
	case <-time.After(10 * time.Second):
		t.Fatal("no message within 10s")
		return ""
	}
}

func (e *dialEvents) err(t *testing.T) error {
	t.Helper()
	select {
	case err := <-e.errs:
		return err
	case <-time.After(10 * time.Second):
		t.Fatal("no error within 10s")
		return nil
	}
}

func TestDialEcho(t *testing.T) {
	w, l := dialWorker(t)
	for _, tc := range []struct{ name, network, listen, dial string }{
		{"ipv4", "tcp", "127.0.0.1:0", "tcp://%s"},
		{"bare", "tcp", "127.0.0.1:0", "%s"},
		{"ipv6", "tcp6", "[::1]:0", "tcp6://%s"},
		{"name", "tcp", "127.0.0.1:0", "localhost"},
		{"unix", "unix", filepath.Join(t.TempDir(), "echo.sock"), "unix://%s"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ln := lineEchoServer(t, tc.network, tc.listen)
			addr := strings.Replace(tc.dial, "%s", ln.Addr().String(), 1)
			if tc.dial == "localhost" {
				addr = "tcp4://localhost:" + portOf(ln.Addr())
			}
			e := newDialEvents()
			var c *Conn
			onLoop(t, l, func() {
				var err error
				if c, err = l.Dial(context.Background(), addr, e.dialer()); err != nil {
					t.Errorf("Dial(%q): %v", addr, err)
					return
				}
				c.Send([]byte("before the connect")) // queued until it connects
			})
			if c == nil {
				return
			}
			if got := e.msg(t); got != "before the connect" {
				t.Fatalf("got %q", got)
			}
			c.Send([]byte("after"))
			if got := e.msg(t); got != "after" {
				t.Fatalf("got %q", got)
			}
			c.Close()
			waitFor(t, 5*time.Second, "OnClose", func() bool { return e.closes.Load() == 1 })
			if n := e.connects.Load(); n != 1 {
				t.Fatalf("OnConnect ran %d times", n)
			}
		})
	}
	s := w.Stats().Loops[0]
	if s.Dialed != 5 || s.DialFailed != 0 || s.Active != 0 || s.Accepted+s.Dialed != s.Closed {
		t.Fatalf("stats: dialed %d, failed %d, active %d, accepted %d, closed %d", s.Dialed, s.DialFailed, s.Active, s.Accepted, s.Closed)
	}
}

func portOf(a net.Addr) string {
	_, p, _ := net.SplitHostPort(a.String())
	return p
}

func TestDialRefused(t *testing.T) {
	w, l := dialWorker(t)
	addr := refusedAddr(t)
	e := newDialEvents()
	onLoop(t, l, func() { l.Dial(context.Background(), addr, e.dialer()) })
	err := e.err(t)
	var op *net.OpError
	if !errors.As(err, &op) || !errors.Is(err, unix.ECONNREFUSED) || !strings.Contains(err.Error(), addr) {
		t.Fatalf("error %v (%T): want a *net.OpError naming %s and ECONNREFUSED", err, err, addr)
	}
	t.Logf("the error: %v", err)
	time.Sleep(50 * time.Millisecond)
	if e.connects.Load() != 0 || e.closes.Load() != 0 {
		t.Fatalf("OnConnect %d, OnClose %d times for a refused dial; want neither", e.connects.Load(), e.closes.Load())
	}
	waitFor(t, 5*time.Second, "stats", func() bool {
		s := w.Stats().Loops[0]
		return s.Dialed == 1 && s.DialFailed == 1 && s.Active == 0 && s.Closed == 1
	})
}

func TestDialBadAddress(t *testing.T) {
	_, l := dialWorker(t)
	for _, addr := range []string{"", "127.0.0.1", "udp://127.0.0.1:9", "tcp://:80", "unix://", "tcp://[::1:80"} {
		if c, err := l.Dial(context.Background(), addr, &Dialer{}); err == nil {
			t.Errorf("Dial(%q) = %v, nil; want an error", addr, c)
		} else if !strings.Contains(err.Error(), "herd: dial") {
			t.Errorf("Dial(%q): %v; want it to say herd: dial", addr, err)
		}
	}
	// A name that does not resolve fails in OnError, named.
	e := newDialEvents()
	l.Dial(context.Background(), "tcp://no-such-host.invalid:80", e.dialer())
	if err := e.err(t); !strings.Contains(err.Error(), "no-such-host.invalid") {
		t.Fatalf("error %v does not name the host", err)
	}
}

// refusedAddr and silentAddr are loopback addresses where a
// connect is refused, and where it hangs.
var (
	refusedAddr = loopback.RefusedAddr
	silentAddr  = loopback.SilentAddr
)

func TestDialTimeoutAndCancel(t *testing.T) {
	t.Parallel()
	_, l := dialWorker(t)
	addr := silentAddr(t)

	e := newDialEvents()
	d := e.dialer()
	d.Timeout = 200 * time.Millisecond
	start := time.Now()
	onLoop(t, l, func() { l.Dial(context.Background(), addr, d) })
	err := e.err(t)
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() || !strings.Contains(err.Error(), addr) {
		t.Fatalf("error %v: want a timeout naming %s", err, addr)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("timed out after %v; Timeout was 200ms", took)
	}

	ctx, cancel := context.WithCancel(context.Background())
	e2 := newDialEvents()
	onLoop(t, l, func() { l.Dial(ctx, addr, e2.dialer()) })
	time.Sleep(100 * time.Millisecond)
	cancel()
	if err := e2.err(t); !errors.Is(err, context.Canceled) {
		t.Fatalf("error %v: want context.Canceled", err)
	}
	waitFor(t, 5*time.Second, "no connection left", func() bool { return l.active.Load() == 0 })
}

// TestDialReconnect: a server that closes each connection at once; the
// Dialer connects again after each end, until its context ends; Close
// stops it too.
func TestDialReconnect(t *testing.T) {
	_, l := dialWorker(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var accepted atomic.Int32
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			c.Close()
		}
	}()
	ctx, cancel := context.WithCancel(context.Background())
	e := newDialEvents()
	d := e.dialer()
	d.Reconnect = Backoff{Initial: 5 * time.Millisecond, Max: 20 * time.Millisecond}
	onLoop(t, l, func() { l.Dial(ctx, ln.Addr().String(), d) })
	waitFor(t, 10*time.Second, "five connections", func() bool { return e.closes.Load() >= 5 })
	cancel()
	time.Sleep(100 * time.Millisecond)
	n := e.connects.Load()
	time.Sleep(200 * time.Millisecond)
	if e.connects.Load() != n {
		t.Fatalf("it went on reconnecting after its context ended (%d, then %d)", n, e.connects.Load())
	}

	// A refused address is retried too, each failure reported.
	refused := refusedAddr(t)
	ctx2, cancel2 := context.WithCancel(context.Background())
	defer cancel2()
	e2 := newDialEvents()
	d2 := e2.dialer()
	d2.Reconnect = Backoff{Initial: time.Millisecond, Max: 5 * time.Millisecond}
	onLoop(t, l, func() { l.Dial(ctx2, refused, d2) })
	for i := 0; i < 3; i++ {
		if err := e2.err(t); !errors.Is(err, unix.ECONNREFUSED) {
			t.Fatalf("attempt %d: %v", i, err)
		}
	}
	cancel2()
}

// TestDialStalledPeer: a dialed connection to a peer that does not read
// queues what it is written (Write: nothing dropped) and delivers it
// whole once the peer reads.
func TestDialStalledPeer(t *testing.T) {
	t.Parallel()
	_, l := dialWorker(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			accepted <- c
		}
	}()
	connected := make(chan *Conn, 1)
	d := &Dialer{OnConnect: func(c *Conn) { connected <- c }}
	onLoop(t, l, func() { l.Dial(context.Background(), ln.Addr().String(), d) })
	c := acceptedConn(t, connected)
	peer := <-accepted
	defer peer.Close()
	payload := offsetPayload(16 << 20)
	for off := 0; off < len(payload); off += 64 << 10 {
		if _, err := c.Write(payload[off:min(off+64<<10, len(payload))]); err != nil {
			t.Fatalf("Write: %v", err)
		}
	}
	if q := c.SendQueueBytes(); q == 0 {
		t.Fatalf("nothing queued with a peer that reads nothing")
	}
	time.Sleep(200 * time.Millisecond) // the peer stays stalled a while
	c.CloseWrite()
	got, err := io.ReadAll(peer)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	if len(got) != len(payload) || string(got) != string(payload) {
		t.Fatalf("got %d bytes, want %d, intact", len(got), len(payload))
	}
}

func TestDialUnixMissing(t *testing.T) {
	_, l := dialWorker(t)
	e := newDialEvents()
	path := filepath.Join(t.TempDir(), "none.sock")
	l.Dial(context.Background(), "unix://"+path, e.dialer())
	if err := e.err(t); !errors.Is(err, os.ErrNotExist) || !strings.Contains(err.Error(), path) {
		t.Fatalf("error %v: want ENOENT naming %s", err, path)
	}
}

// TestDialRefusesBadPorts: a port that is not one (out of range, 0, not
// a service name) is Dial's error at once, as CheckDialAddr says, not a
// failed connect later; LookupDialAddr also refuses a name that does not
// resolve.
func TestDialRefusesBadPorts(t *testing.T) {
	_, l := dialWorker(t)
	for _, addr := range []string{"127.0.0.1:99999", "127.0.0.1:abc", "127.0.0.1:-5", "127.0.0.1:0", "tcp://[::1]:65536"} {
		want := fmt.Sprintf("herd: dial %q: invalid port", addr)
		if _, err := l.Dial(context.Background(), addr, &Dialer{}); err == nil || !strings.HasPrefix(err.Error(), want) {
			t.Errorf("Dial(%q): %v; want %q", addr, err, want)
		}
		if err := CheckDialAddr(addr); err == nil || !strings.HasPrefix(err.Error(), want) {
			t.Errorf("CheckDialAddr(%q): %v; want %q", addr, err, want)
		}
	}
	for _, addr := range []string{"127.0.0.1:1", "127.0.0.1:65535", "localhost:http", "unix:///x.sock"} {
		if err := LookupDialAddr(context.Background(), addr); err != nil {
			t.Errorf("LookupDialAddr(%q): %v", addr, err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	const unknown = "nosuchhost.invalid:31001"
	if err := LookupDialAddr(ctx, unknown); err == nil || !strings.HasPrefix(err.Error(), fmt.Sprintf("herd: dial %q: ", unknown)) {
		t.Errorf("LookupDialAddr(%q): %v; want it refused, named", unknown, err)
	}
	if err := CheckDialAddr(unknown); err != nil {
		t.Errorf("CheckDialAddr(%q) looked the name up: %v", unknown, err)
	}
}

// FuzzParseDialAddr: any address is parsed or refused with an error that
// says herd: dial; what is accepted names a known network and, for TCP, a
// host and port that join back into what was split.
func FuzzParseDialAddr(f *testing.F) {
	for _, a := range []string{"127.0.0.1:80", "tcp://[::1]:9000", "tcp4://localhost:http", "unix:///tmp/x.sock", "udp://1.2.3.4:5", "tcp://:80", "[::1%lo]:1"} {
		f.Add(a)
	}
	f.Fuzz(func(t *testing.T, addr string) {
		network, host, port, path, err := parseDialAddr(addr)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "herd: dial ") {
				t.Fatalf("error %q", err)
			}
			return
		}
		switch network {
		case "unix":
			if path == "" {
				t.Fatalf("%q: unix with no path", addr)
			}
		case "tcp", "tcp4", "tcp6":
			h, p, err := net.SplitHostPort(net.JoinHostPort(host, port))
			if host == "" || err != nil || h != host || p != port {
				t.Fatalf("%q: host %q port %q do not join back (%v)", addr, host, port, err)
			}
		default:
			t.Fatalf("%q: network %q", addr, network)
		}
	})
}

func TestBackoff(t *testing.T) {
	b := Backoff{Initial: 10 * time.Millisecond, Max: 100 * time.Millisecond}
	for attempt, want := range []time.Duration{10, 20, 40, 80, 100, 100} {
		want *= time.Millisecond
		for i := 0; i < 50; i++ {
			if d := b.delay(attempt); d < want || d > want+want/5 {
				t.Fatalf("attempt %d: %v, want %v to %v", attempt, d, want, want+want/5)
			}
		}
	}
	if d := (Backoff{Initial: time.Minute}).delay(3); d < 30*time.Second || d > 36*time.Second {
		t.Fatalf("Max zero should cap at 30s: %v", d)
	}
}
