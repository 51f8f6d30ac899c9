//go:build linux

package balancer

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/seed358e4494/herd"
	"github.com/seed358e4494/herd/internal/herdtest"
	"github.com/seed358e4494/herd/internal/loopback"
	"github.com/seed358e4494/herd/internal/soak"
)

// testBackend is a goroutine TCP server standing in for a real one.
type testBackend struct {
	ln       net.Listener
	addr     string
	accepted atomic.Int64
	open     atomic.Int64
}

// startBackend serves each connection with f; f's connection is closed
// when it returns.
func startBackend(t *testing.T, f func(c *net.TCPConn)) *testBackend {
	t.Helper()
	return listenBackend(t, "tcp", "127.0.0.1:0", overTCP(f))
}

// overTCP serves a TCP connection with f.
func overTCP(f func(c *net.TCPConn)) func(c net.Conn) {
	return func(c net.Conn) { f(c.(*net.TCPConn)) }
}

// listenBackend is startBackend on any network and address.
func listenBackend(t *testing.T, network, addr string, f func(c net.Conn)) *testBackend {
	t.Helper()
	ln, err := net.Listen(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	b := &testBackend{ln: ln, addr: ln.Addr().String()}
	t.Cleanup(func() { ln.Close() })
	go b.serve(f)
	return b
}

func (b *testBackend) serve(f func(c net.Conn)) {
	for {
		c, err := b.ln.Accept()
		if err != nil {
			return
		}
		b.accepted.Add(1)
		b.open.Add(1)
		go func() {
			defer b.open.Add(-1)
			defer c.Close()
			f(c)
		}()
	}
}

// idServer answers each connection with its id byte, then echoes.
func idServer(id byte) func(c *net.TCPConn) {
	return func(c *net.TCPConn) {
		c.Write([]byte{id})
		io.Copy(c, c)
	}
}

// runBalancer attaches b to a two-loop worker and runs it.
func runBalancer(t *testing.T, b *Balancer, tune func(w *herd.Worker)) string {
	t.Helper()
	if b.Logger == nil {
		b.Logger = quiet
	}
	w := &herd.Worker{Addr: "tcp://127.0.0.1:0", Count: 2, ReusePort: true, Logger: quiet}
	if tune != nil {
		tune(w)
	}
	if err := b.Attach(w); err != nil {
		t.Fatalf("Attach: %v", err)
	}
	return herdtest.Run(t, w)
}

// askID connects through the balancer from local (nil: any) and returns
// the id of the backend that answered, the connection still open.
func askID(addr string, local net.Addr) (byte, net.Conn, error) {
	d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: local}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		return 0, nil, err
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	var id [1]byte
	if _, err := io.ReadFull(c, id[:]); err != nil {
		c.Close()
		return 0, nil, err
	}
	return id[0], c, nil
}

// TestDistribution sends 10,000 short connections with HERD_SOAK (2,000 without)
// through the balancer per algorithm, weights 1, 2, 3, 4, and checks the
// shares the backends got, with the bounds of the pickers' own tests.
func TestDistribution(t *testing.T) {
	n := 10000
	if !soak.Enabled() {
		n = 2000
	}
	weights := []int{1, 2, 3, 4}
	var bes []Backend
	for i, w := range weights {
		tb := startBackend(t, idServer(byte(i)))
		bes = append(bes, Backend{Addr: tb.addr, Weight: w})
	}
	for _, alg := range []Algorithm{Random, RoundRobin, WeightedRoundRobin, PowerOfTwo} {
		t.Run(string(alg), func(t *testing.T) {
			addr := runBalancer(t, &Balancer{Backends: bes, Algorithm: alg}, nil)
			counts := make([]int, len(weights))
			var mu sync.Mutex
			var wg sync.WaitGroup
			var failed atomic.Int32
			per := n / 8
			for g := 0; g < 8; g++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := 0; i < per; i++ {
						id, c, err := askID(addr, nil)
						if err != nil {
							failed.Add(1)
							continue
						}
						c.Close()
						mu.Lock()
						counts[id]++
						mu.Unlock()
					}
				}()
			}
			wg.Wait()
			if f := failed.Load(); f != 0 {
				t.Fatalf("%d connections failed", f)
			}
			if alg == RoundRobin {
				for i, c := range counts {
					if c != n/len(weights) {
						t.Errorf("backend %d got %d of %d (round robin ignores weights)", i, c, n)
					}
				}
				t.Logf("%s: %v", alg, counts)
				return
			}
			checkShares(t, string(alg), newBackends(weights...), counts, n)
		})
	}
}

// TestLeastConnsLongLivedProxied: 1,000 connections that stay open (200
// without HERD_SOAK) are spread exactly by weight.
func TestLeastConnsLongLivedProxied(t *testing.T) {
	n := 1000
	if !soak.Enabled() {
		n = 200
	}
	weights := []int{1, 1, 3, 5}
	var bes []Backend
	for i, w := range weights {
		tb := startBackend(t, idServer(byte(i)))
		bes = append(bes, Backend{Addr: tb.addr, Weight: w})
	}
	addr := runBalancer(t, &Balancer{Backends: bes, Algorithm: LeastConns}, nil)
	counts := make([]int, len(weights))
	for i := 0; i < n; i++ {
		id, c, err := askID(addr, nil)
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		defer c.Close()
		counts[id]++
	}
	for i, w := range weights {
		if want := n * w / 10; counts[i] != want {
			t.Errorf("backend %d (weight %d) holds %d connections, want exactly %d", i, w, counts[i], want)
		}
	}
	t.Logf("leastconn, weights %v, %d long-lived connections: %v", weights, n, counts)
}

// TestSourceHash: each client address keeps its backend, and draining
// one of five backends moves only the clients it had (about a fifth).
func TestSourceHash(t *testing.T) {
	const clients = 250 // 127.0.1.1 to 127.0.1.250
	var bes []Backend
	for i := 0; i < 5; i++ {
		tb := startBackend(t, idServer(byte(i)))
		bes = append(bes, Backend{Addr: tb.addr})
	}
	b := &Balancer{Backends: bes, Algorithm: SourceHash}
	addr := runBalancer(t, b, nil)
	local := func(i int) net.Addr { return &net.TCPAddr{IP: net.IPv4(127, 0, 1, byte(i+1))} }
	ask := func(i int) byte {
		id, c, err := askID(addr, local(i))
		if err != nil {
			t.Fatalf("client %d: %v", i, err)
		}
		c.Close()
		return id
	}
	first := make([]byte, clients)
	counts := make([]int, 5)
	for i := range first {
		first[i] = ask(i)
		counts[first[i]]++
	}
	for i := range first {
		if again := ask(i); again != first[i] {
			t.Fatalf("client %d went to backend %d, then %d", i, first[i], again)
		}
	}
	t.Logf("250 client addresses over 5 backends: %v", counts)
	if err := b.SetDraining(bes[2].Addr, true); err != nil {
		t.Fatal(err)
	}
	moved := 0
	for i := range first {
		now := ask(i)
		switch {
		case first[i] == 2 && now == 2:
			t.Fatalf("client %d still sent to the drained backend", i)
		case first[i] != 2 && now != first[i]:
			t.Fatalf("client %d moved from backend %d to %d though its backend stayed", i, first[i], now)
		case now != first[i]:
			moved++
		}
	}
	t.Logf("draining one of 5 backends moved %d of %d clients (%.1f%%)", moved, clients, 100*float64(moved)/clients)
	if moved != counts[2] {
		t.Fatalf("moved %d clients; the drained backend had %d", moved, counts[2])
	}
}

// TestRetryAndEject: one backend of three refuses; every client is still
// served (retried elsewhere), and the refusing backend is marked down
// after Fall failures.
func TestRetryAndEject(t *testing.T) {
	good1 := startBackend(t, idServer(1))
	good2 := startBackend(t, idServer(2))
	bad := refusedAddr(t)
	b := &Balancer{
		Backends:  []Backend{{Addr: bad}, {Addr: good1.addr}, {Addr: good2.addr}},
		Algorithm: RoundRobin,
		Health:    HealthCheck{Fall: 3, EjectFor: time.Hour},
	}
	addr := runBalancer(t, b, nil)
	for i := 0; i < 60; i++ {
		id, c, err := askID(addr, nil)
		if err != nil {
			t.Fatalf("client %d: %v", i, err)
		}
		c.Close()
		if id == 0 {
			t.Fatal("the refusing backend answered?")
		}
	}
	s := b.Stats().Backends[0]
	if s.State != Down || s.ConnectErrors != 3 || s.Total != 0 {
		t.Fatalf("refusing backend: %+v; want down after exactly 3 connect errors", s)
	}
	if tot := b.Stats().Backends[1].Total + b.Stats().Backends[2].Total; tot != 60 {
		t.Fatalf("the good backends took %d connections, want 60", tot)
	}
}

// TestAllDown: with every backend refusing, a client is closed promptly
// (an end of stream, not a hang).
func TestAllDown(t *testing.T) {
	b := &Balancer{Backends: []Backend{{Addr: refusedAddr(t)}, {Addr: refusedAddr(t)}}}
	addr := runBalancer(t, b, nil)
	for i := 0; i < 10; i++ {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		c.Write([]byte("hello?"))
		c.SetDeadline(time.Now().Add(5 * time.Second))
		start := time.Now()
		n, err := c.Read(make([]byte, 10))
		c.Close()
		if n != 0 || err != io.EOF {
			t.Fatalf("client %d: read %d, %v; want the end of stream", i, n, err)
		}
		if took := time.Since(start); took > 2*time.Second {
			t.Fatalf("closed after %v", took)
		}
	}
	if s := b.Stats(); s.NoBackend != 10 {
		t.Fatalf("NoBackend %d, want 10", s.NoBackend)
	}
}

// TestHealthChecks: a TCP check marks a backend down after Fall failures
// once it stops listening, and up after Rise passes once it is back; an
// HTTP check follows the status its backend answers.
func TestHealthChecks(t *testing.T) {
	t.Run("tcp", func(t *testing.T) {
		tb := startBackend(t, idServer(0))
		b := &Balancer{Backends: []Backend{{Addr: tb.addr}}, Health: HealthCheck{Interval: 20 * time.Millisecond, Rise: 2, Fall: 3}}
		runBalancer(t, b, nil)
		state := func() State { return b.Stats().Backends[0].State }
		time.Sleep(100 * time.Millisecond)
		if state() != Up {
			t.Fatalf("state %s with the backend listening", state())
		}
		tb.ln.Close()
		herdtest.WaitFor(t, "down", func() bool { return state() == Down })
		if f := b.Stats().Backends[0].ChecksFailed; f < 3 {
			t.Fatalf("down after %d failed checks; Fall is 3", f)
		}
		ln, err := net.Listen("tcp", tb.addr)
		if err != nil {
			t.Skipf("cannot listen on %s again: %v", tb.addr, err)
		}
		defer ln.Close()
		go (&testBackend{ln: ln}).serve(overTCP(idServer(0)))
		herdtest.WaitFor(t, "up", func() bool { return state() == Up })
		if d := b.Stats().Backends[0].DownTime; d <= 0 {
			t.Fatalf("DownTime %v after being down", d)
		}
	})
	t.Run("http", func(t *testing.T) {
		var status atomic.Int32
		status.Store(200)
		tb := startBackend(t, func(c *net.TCPConn) {
			br := bufio.NewReader(c)
			line, err := br.ReadString('\n')
			if err != nil || !strings.HasPrefix(line, "GET /health HTTP/1.0") {
				return
			}
			fmt.Fprintf(c, "HTTP/1.0 %d X\r\nContent-Length: 0\r\n\r\n", status.Load())
		})
		b := &Balancer{Backends: []Backend{{Addr: tb.addr}}, Health: HealthCheck{Interval: 20 * time.Millisecond, HTTPPath: "/health"}}
		runBalancer(t, b, nil)
		state := func() State { return b.Stats().Backends[0].State }
		time.Sleep(100 * time.Millisecond)
		if state() != Up {
			t.Fatalf("state %s answering 200", state())
		}
		status.Store(503)
		herdtest.WaitFor(t, "down on 503", func() bool { return state() == Down })
		status.Store(204)
		herdtest.WaitFor(t, "up on 204", func() bool { return state() == Up })
	})
}

// TestUnixBackend: a backend on a unix socket is proxied to and checked
// over HTTP (with Host: localhost, a path being no host).
func TestUnixBackend(t *testing.T) {
	path := t.TempDir() + "/backend.sock"
	hosts := make(chan string, 16)
	listenBackend(t, "unix", path, func(c net.Conn) {
		br := bufio.NewReader(c)
		line, err := br.ReadString('\n')
		if err != nil {
			return
		}
		if strings.HasPrefix(line, "GET /health") {
			host := ""
			for {
				h, err := br.ReadString('\n')
				if err != nil || h == "\r\n" {
					break
				}
				if v, ok := strings.CutPrefix(h, "Host: "); ok {
					host = strings.TrimSpace(v)
				}
			}
			select {
			case hosts <- host:
			default:
			}
			io.WriteString(c, "HTTP/1.0 200 OK\r\n\r\n")
			return
		}
		c.Write([]byte(line))
	})
	b := &Balancer{Backends: []Backend{{Addr: "unix://" + path}}, Health: HealthCheck{Interval: 20 * time.Millisecond, HTTPPath: "/health"}}
	addr := runBalancer(t, b, nil)
	select {
	case h := <-hosts:
		if h != "localhost" {
			t.Fatalf("the check said Host: %q", h)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no health check reached the unix backend")
	}
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(c, "hello over unix\n")
	if got, err := bufio.NewReader(c).ReadString('\n'); err != nil || got != "hello over unix\n" {
		t.Fatalf("got %q, %v", got, err)
	}
	if s := b.Stats().Backends[0]; s.State != Up || s.ChecksFailed != 0 {
		t.Fatalf("unix backend: %+v", s)
	}
}

// TestSlowStart: a backend that comes back up takes a growing share.
func TestSlowStart(t *testing.T) {
	tb := startBackend(t, idServer(0))
	b := &Balancer{Backends: []Backend{{Addr: tb.addr, Weight: 4}}, SlowStart: 500 * time.Millisecond,
		Health: HealthCheck{Fall: 1, EjectFor: 50 * time.Millisecond}}
	runBalancer(t, b, nil)
	be := b.backends[0]
	b.markDown(be, nil)
	herdtest.WaitFor(t, "back up", func() bool { return b.Stats().Backends[0].State == Up })
	first := b.Stats().Backends[0].EffectiveWeight
	time.Sleep(250 * time.Millisecond)
	mid := b.Stats().Backends[0].EffectiveWeight
	herdtest.WaitFor(t, "full weight", func() bool { return b.Stats().Backends[0].EffectiveWeight == 4 })
	if !(first < mid && mid < 4) || first > 2 {
		t.Fatalf("effective weight %g, then %g, then 4: want it to grow from about a tenth", first, mid)
	}
	t.Logf("slow start, weight 4 over 500ms: %g, then %g after 250ms, then 4", first, mid)
}

// TestDrainKeepsOpenConnections: a drained backend takes no new
// connections, and those it has go on.
func TestDrainKeepsOpenConnections(t *testing.T) {
	a := startBackend(t, idServer(0))
	bb := startBackend(t, idServer(1))
	b := &Balancer{Backends: []Backend{{Addr: a.addr}, {Addr: bb.addr}}, Algorithm: RoundRobin}
	addr := runBalancer(t, b, nil)
	var onA []net.Conn
	for i := 0; i < 10; i++ {
		id, c, err := askID(addr, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if id == 0 {
			onA = append(onA, c)
		}
	}
	b.SetDraining(a.addr, true)
	for i := 0; i < 10; i++ {
		id, c, err := askID(addr, nil)
		if err != nil || id != 1 {
			t.Fatalf("new connection went to %d (%v) with backend 0 draining", id, err)
		}
		c.Close()
	}
	for _, c := range onA {
		c.Write([]byte("still here"))
		buf := make([]byte, 10)
		if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "still here" {
			t.Fatalf("a connection to the draining backend: %q, %v", buf, err)
		}
	}
	if s := b.Stats().Backends[0]; s.State != Draining || s.Active != int64(len(onA)) {
		t.Fatalf("draining backend: %+v", s)
	}
}

// TestProxyProtocol: backends get the client's address in a PROXY header
// (v1 and v2) before the client's bytes, copying or splicing (the header
// is queued before the splicing starts, and must stay first).
func TestProxyProtocol(t *testing.T) {
	for _, tc := range []struct {
		v      int
		splice bool
	}{{1, false}, {2, false}, {1, true}, {2, true}} {
		v := tc.v
		t.Run(fmt.Sprintf("v%d/splice=%v", v, tc.splice), func(t *testing.T) {
			got := make(chan string, 1)
			tb := startBackend(t, func(c *net.TCPConn) {
				br := bufio.NewReader(c)
				var src string
				if v == 1 {
					line, _ := br.ReadString('\n')
					f := strings.Fields(line)
					if len(f) == 6 && f[0] == "PROXY" && f[1] == "TCP4" {
						src = net.JoinHostPort(f[2], f[4])
					}
				} else {
					head := make([]byte, 16)
					io.ReadFull(br, head)
					body := make([]byte, binary.BigEndian.Uint16(head[14:]))
					io.ReadFull(br, body)
					if bytes.Equal(head[:12], []byte(proxyV2Sig)) && head[12] == 0x21 && head[13] == 0x11 && len(body) >= 12 {
						src = net.JoinHostPort(net.IP(body[0:4]).String(), strconv.Itoa(int(binary.BigEndian.Uint16(body[8:]))))
					}
				}
				rest, _ := br.ReadString('\n')
				got <- src + " " + rest
			})
			addr := runBalancer(t, &Balancer{Backends: []Backend{{Addr: tb.addr}}, ProxyProtocol: v, Splice: tc.splice}, nil)
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.Write([]byte("hello\n"))
			select {
			case g := <-got:
				if want := c.LocalAddr().String() + " hello\n"; g != want {
					t.Fatalf("backend saw %q, want %q", g, want)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("backend got nothing")
			}
		})
	}
}

// TestSilentBackend: a backend that accepts and never answers is closed,
// with its client, by the Worker's IdleTimeout; the client sees a reset
// (what it was owed was cut), not an end of stream.
func TestSilentBackend(t *testing.T) {
	tb := startBackend(t, func(c *net.TCPConn) { io.Copy(io.Discard, c) })
	addr := runBalancer(t, &Balancer{Backends: []Backend{{Addr: tb.addr}}}, func(w *herd.Worker) { w.IdleTimeout = 200 * time.Millisecond })
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("anyone?"))
	c.SetDeadline(time.Now().Add(5 * time.Second))
	start := time.Now()
	if n, err := c.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("read %d bytes, %v from a silent backend; want a reset", n, err)
	}
	if took := time.Since(start); took > 3*time.Second {
		t.Fatalf("closed after %v with IdleTimeout 200ms", took)
	}
	herdtest.WaitFor(t, "the backend's connection closed", func() bool { return tb.open.Load() == 0 })
}

// TestEarlyBytesAndRetry: a client that sends 256 KiB and ends its stream
// at once, while its first backend refuses: the bytes read before a
// backend was connected (more than maxEarly, so the client is paused too)
// reach the second backend whole and in order, and the client's end
// follows them.
func TestEarlyBytesAndRetry(t *testing.T) {
	for _, splice := range []bool{false, true} {
		t.Run(fmt.Sprintf("splice=%v", splice), func(t *testing.T) {
			good := startBackend(t, func(c *net.TCPConn) {
				h := sha256.New()
				n, _ := io.Copy(h, c) // to the client's end of stream
				fmt.Fprintf(c, "%d %x", n, h.Sum(nil))
			})
			b := &Balancer{Backends: []Backend{{Addr: refusedAddr(t)}, {Addr: good.addr}}, Algorithm: RoundRobin, Splice: splice}
			addr := runBalancer(t, b, nil)
			for i := 0; i < 4; i++ {
				c, err := net.Dial("tcp", addr)
				if err != nil {
					t.Fatal(err)
				}
				c.SetDeadline(time.Now().Add(10 * time.Second))
				payload := bytes.Repeat([]byte(fmt.Sprintf("client %d ", i)), 256<<10/9)
				go func() {
					c.Write(payload)
					c.(*net.TCPConn).CloseWrite()
				}()
				got, err := io.ReadAll(c)
				c.Close()
				want := fmt.Sprintf("%d %x", len(payload), sha256.Sum256(payload))
				if err != nil || string(got) != want {
					t.Fatalf("connection %d: backend saw %q (%v); want %q", i, got, err, want)
				}
			}
			if s := b.Stats().Backends; s[1].Total != 4 || s[1].BytesIn != 4*uint64(len(bytes.Repeat([]byte("client 0 "), 256<<10/9))) {
				t.Fatalf("stats: %+v", s)
			}
		})
	}
}

// TestConnectTimeout: a backend whose connects hang is given up after
// ConnectTimeout, counted against it, and the client is served by
// another.
func TestConnectTimeout(t *testing.T) {
	t.Parallel()
	good := startBackend(t, idServer(1))
	b := &Balancer{Backends: []Backend{{Addr: loopback.SilentAddr(t)}, {Addr: good.addr}}, Algorithm: RoundRobin,
		ConnectTimeout: 200 * time.Millisecond}
	addr := runBalancer(t, b, nil)
	start := time.Now()
	for i := 0; i < 2; i++ {
		id, c, err := askID(addr, nil)
		if err != nil || id != 1 {
			t.Fatalf("client %d: backend %d, %v", i, id, err)
		}
		c.Close()
	}
	// Round robin sends each client to the silent backend first (the
	// retry takes the other's turn): each waits out the timeout once.
	if took := time.Since(start); took < 400*time.Millisecond || took > 5*time.Second {
		t.Fatalf("took %v: each of the two clients should have waited for the 200ms connect timeout", took)
	}
	if s := b.Stats().Backends[0]; s.ConnectErrors != 2 || s.Total != 0 {
		t.Fatalf("silent backend: %+v; want two connect errors", s)
	}
	// A client that resets while its backend is still connecting takes
	// its session along: nothing stays counted as active. (One that ends
	// its stream is still served: its end is passed on once piped.)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond) // connecting to the silent backend
	c.(*net.TCPConn).SetLinger(0)
	c.Close()
	herdtest.WaitFor(t, "no active session", func() bool { return b.Stats().Backends[0].Active == 0 && b.Stats().Backends[1].Active == 0 })
}

// TestScaleUnderLoad: Worker.Scale 4 to 1 to 3 while clients churn
// through the balancer: no connection fails.
func TestScaleUnderLoad(t *testing.T) {
	var bes []Backend
	for i := 0; i < 2; i++ {
		bes = append(bes, Backend{Addr: startBackend(t, idServer(byte(i))).addr})
	}
	b := &Balancer{Backends: bes, Logger: quiet}
	w := &herd.Worker{Addr: "tcp://127.0.0.1:0", Count: 4, ReusePort: true, Logger: quiet}
	if err := b.Attach(w); err != nil {
		t.Fatal(err)
	}
	addr := herdtest.Run(t, w)
	var stop atomic.Bool
	var done, failed atomic.Int64
	var wg sync.WaitGroup
	for g := 0; g < 16; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				_, c, err := askID(addr, nil)
				if err != nil {
					failed.Add(1)
					t.Errorf("a client failed: %v", err)
					return
				}
				c.Write([]byte("x"))
				var one [1]byte
				if _, err := io.ReadFull(c, one[:]); err != nil || one[0] != 'x' {
					failed.Add(1)
					t.Errorf("echo through the balancer: %q, %v", one, err)
				}
				c.Close()
				done.Add(1)
			}
		}()
	}
	for _, n := range []int{1, 3, 2} {
		before := done.Load()
		herdtest.WaitFor(t, "traffic", func() bool { return done.Load() > before+300 })
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err := w.Scale(ctx, n)
		cancel()
		if err != nil {
			t.Fatalf("Scale(%d): %v", n, err)
		}
	}
	before := done.Load()
	herdtest.WaitFor(t, "traffic after the last Scale", func() bool { return done.Load() > before+300 })
	stop.Store(true)
	wg.Wait()
	s := b.Stats()
	t.Logf("%d proxied connections across Scale 4-1-3-2, %d failed; backends took %d and %d", done.Load(), failed.Load(), s.Backends[0].Total, s.Backends[1].Total)
	for _, be := range s.Backends {
		if be.ConnectErrors != 0 || be.State != Up {
			t.Fatalf("backend %+v", be)
		}
	}
}

// TestAllocsPerConnection counts the heap allocations a short proxied
// connection costs this process, less those of the same connection made
// straight to the backend (the client's and the backend's own): the
// proxy's share, which was 24 before it was worked on and is 15 now (one
// for the session's own Pipe OnDone, which counts it out). The bound keeps
// it from creeping back.
func TestAllocsPerConnection(t *testing.T) {
	if !soak.Enabled() {
		t.Skip("counts allocations over 2,000 connections")
	}
	tb := startBackend(t, func(c *net.TCPConn) {
		buf := make([]byte, 64)
		n, _ := c.Read(buf)
		c.Write(buf[:n])
	})
	addr := runBalancer(t, &Balancer{Backends: []Backend{{Addr: tb.addr}}}, func(w *herd.Worker) { w.Count = 1 })
	one := func(addr string) {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		c.Write([]byte("hello"))
		io.ReadAll(c)
		c.Close()
	}
	perConn := func(addr string) float64 {
		for range 200 {
			one(addr)
		}
		time.Sleep(100 * time.Millisecond)
		var m0, m1 runtime.MemStats
		runtime.ReadMemStats(&m0)
		const n = 2000
		for range n {
			one(addr)
		}
		time.Sleep(100 * time.Millisecond)
		runtime.ReadMemStats(&m1)
		return float64(m1.Mallocs-m0.Mallocs) / n
	}
	direct, proxied := perConn(tb.addr), perConn(addr)
	t.Logf("allocations per connection: direct %.1f, through the balancer %.1f: the balancer's share %.1f", direct, proxied, proxied-direct)
	if proxied-direct > 18 {
		t.Fatalf("the balancer allocates %.1f times per proxied connection; it did 15", proxied-direct)
	}
}
