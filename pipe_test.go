//go:build linux || darwin || freebsd

package herd

import (
	"bufio"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/seed358e4494/herd/internal/soak"
)

// pipeProxy is a worker that pipes each connection to backend, dialed
// from the client's loop once the client is accepted, and records what
// each pipe reported when done.
type pipeProxy struct {
	*running
	done    chan pipeResult
	failed  atomic.Int32 // dials that failed
	backend string
}

type pipeResult struct {
	aToB, bToA uint64
	clean      bool
}

func startPipeProxy(t *testing.T, backend string, count int, splice bool) *pipeProxy {
	t.Helper()
	return startPipeProxyOn(t, &Worker{Addr: "tcp://127.0.0.1:0", Count: count}, backend, splice)
}

// startPipeProxyOn is startPipeProxy on a Worker of the test's own.
func startPipeProxyOn(t *testing.T, w *Worker, backend string, splice bool) *pipeProxy {
	t.Helper()
	p := &pipeProxy{done: make(chan pipeResult, 4096), backend: backend}
	w.OnConnect = func(client *Conn) {
		client.PauseRecv() // until the backend is there: its input waits in the kernel
		var dial func()
		d := &Dialer{
			OnConnect: func(b *Conn) {
				err := Pipe(client, b, &PipeOptions{Splice: splice, OnDone: func(ab, ba uint64, clean bool) {
					p.done <- pipeResult{ab, ba, clean}
				}})
				switch {
				case errors.Is(err, ErrNotSameLoop):
					// Scale moved the client while this connected: dial
					// again from its loop.
					b.Abort()
					client.Post(dial)
					return
				case err != nil:
					t.Errorf("Pipe: %v", err)
				}
				client.ResumeRecv()
			},
			OnError: func(_ *Conn, err error) {
				p.failed.Add(1)
				client.reset()
			},
		}
		dial = func() { client.Loop().Dial(context.Background(), p.backend, d) }
		dial()
	}
	p.running = startWorker(t, w)
	return p
}

func (p *pipeProxy) result(t *testing.T) pipeResult {
	t.Helper()
	select {
	case r := <-p.done:
		return r
	case <-time.After(20 * time.Second):
		t.Fatal("no pipe ended within 20s")
		return pipeResult{}
	}
}

// serveEach accepts on ln and runs f for each connection on a goroutine.
func serveEach(t *testing.T, f func(c *net.TCPConn)) net.Listener {
	t.Helper()
	return serveConns(t, "tcp", "127.0.0.1:0", func(c net.Conn) { f(c.(*net.TCPConn)) })
}

// stream is n pseudo-random bytes from seed, written in chunks of
// random sizes.
func writeStream(w io.Writer, seed uint64, n int) error {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	buf := make([]byte, 256<<10)
	for n > 0 {
		k := min(n, 1+r.IntN(len(buf)))
		for i := range buf[:k] {
			buf[i] = byte(r.Uint32())
		}
		if _, err := w.Write(buf[:k]); err != nil {
			return err
		}
		n -= k
	}
	return nil
}

func streamSum(seed uint64, n int) [32]byte {
	h := sha256.New()
	writeStream(h, seed, n)
	return [32]byte(h.Sum(nil))
}

// readSum reads to the end of stream and returns its length and hash.
func readSum(r io.Reader) (int64, [32]byte, error) {
	h := sha256.New()
	n, err := io.Copy(h, r)
	return n, [32]byte(h.Sum(nil)), err
}

// streamGot is what a peer read of a stream: its length and hash.
type streamGot struct {
	n   int64
	sum [32]byte
	err error
}

// sumBackend accepts connections that it reads to their end, reports
// what it read on got, then ends its side.
func sumBackend(t *testing.T, got chan<- streamGot) net.Listener {
	return serveEach(t, func(c *net.TCPConn) {
		c.SetDeadline(time.Now().Add(20 * time.Second))
		n, sum, err := readSum(c)
		c.CloseWrite()
		got <- streamGot{n, sum, err}
	})
}

// dialTCP dials addr with a 20 s deadline on the connection.
func dialTCP(t *testing.T, addr string) *net.TCPConn {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	conn.SetDeadline(time.Now().Add(20 * time.Second))
	return conn.(*net.TCPConn)
}

// Half-close orders for TestPipeBytesExact: who ends its side when.
const (
	bothAtOnce   = iota // both send at the same time, each ends when done
	clientFirst         // the backend answers only after the client's end
	backendFirst        // the client sends only after the backend's end
	orders
)

// TestPipeBytesExact sends 100 MB each way through piped connections (25
// MB each way on each of 4; 1 MB each without HERD_SOAK), in random half-close orders,
// and checks every byte, each pipe's counts and that each ended clean.
func TestPipeBytesExact(t *testing.T) { bothWays(t, testPipeBytesExact) }

func testPipeBytesExact(t *testing.T, splice bool) {
	size, conns := 25<<20, 4
	if !soak.Enabled() {
		size = 1 << 20
	}
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	order := func(i int) int { return int((seed + uint64(i)) % orders) }
	backendGot := make(chan streamGot, conns)
	var idx atomic.Int32
	ln := serveEach(t, func(c *net.TCPConn) {
		// The client says which connection this is in its first 4 bytes.
		var head [4]byte
		if _, err := io.ReadFull(c, head[:]); err != nil {
			backendGot <- streamGot{err: err}
			return
		}
		i := int(head[0])
		var wg sync.WaitGroup
		send := func() {
			writeStream(c, seed+100+uint64(i), size)
			c.CloseWrite()
		}
		switch order(i) {
		case bothAtOnce:
			wg.Add(1)
			go func() { defer wg.Done(); send() }()
		case backendFirst:
			send()
		}
		n, sum, err := readSum(c)
		backendGot <- streamGot{n, sum, err}
		if order(i) == clientFirst {
			send()
		}
		wg.Wait()
	})
	p := startPipeProxy(t, ln.Addr().String(), 2, splice)
	var wg sync.WaitGroup
	clientGot := make([]streamGot, conns)
	for i := 0; i < conns; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := net.Dial("tcp", p.addr)
			if err != nil {
				clientGot[i].err = err
				return
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(60 * time.Second))
			tc := c.(*net.TCPConn)
			tc.Write([]byte{byte(i), 0, 0, 0})
			send := func() {
				writeStream(tc, seed+uint64(i), size)
				tc.CloseWrite()
			}
			var sw sync.WaitGroup
			if order(i) != backendFirst {
				sw.Add(1)
				go func() { defer sw.Done(); send() }()
			}
			n, sum, err := readSum(tc)
			clientGot[i] = streamGot{n, sum, err}
			if order(i) == backendFirst {
				send()
			}
			sw.Wait()
		}()
		idx.Add(1)
	}
	wg.Wait()
	for i := 0; i < conns; i++ {
		g := clientGot[i]
		if g.err != nil || g.n != int64(size) || g.sum != streamSum(seed+100+uint64(i), size) {
			t.Errorf("client %d (order %d): got %d bytes (want %d), intact %v, err %v", i, order(i), g.n, size, g.sum == streamSum(seed+100+uint64(i), size), g.err)
		}
	}
	sums := map[[32]byte]bool{}
	for i := 0; i < conns; i++ {
		sums[streamSum(seed+uint64(i), size+4)] = false // never matches: the header is not part of the stream
		sums[streamSum(seed+uint64(i), size)] = true
	}
	for i := 0; i < conns; i++ {
		g := <-backendGot
		if g.err != nil || g.n != int64(size) || !sums[g.sum] {
			t.Errorf("a backend connection got %d bytes (want %d), intact %v, err %v", g.n, size, sums[g.sum], g.err)
		}
	}
	for i := 0; i < conns; i++ {
		r := p.result(t)
		if !r.clean || r.aToB != uint64(size+4) || r.bToA != uint64(size) {
			t.Errorf("pipe reported %d bytes to the backend (want %d), %d back (want %d), clean %v", r.aToB, size+4, r.bToA, size, r.clean)
		}
	}
	waitFor(t, 5*time.Second, "no connection left", func() bool { return sumStats(p.w).active == 0 })
	var spliced, in uint64
	for _, l := range p.w.Stats().Loops {
		spliced += l.Spliced
		in += l.BytesIn
	}
	t.Logf("spliced %d of %d bytes read", spliced, in)
	if splice && spliced < in*9/10 || !splice && spliced != 0 {
		t.Fatalf("spliced %d of %d bytes read (splice %v)", spliced, in, splice)
	}
}

// TestPipeUrgentData: a peer sends TCP urgent data (MSG_OOB) in the middle
// of a bulk stream, then ends the stream, at once or after a pause. The
// other peer gets every byte in band, as connected directly (the urgent
// byte is not in band), and the pipe ends clean. Spliced, it stalled at
// the urgent mark, or, once the peer had ended, passed on a cut stream as
// whole: splice(2) stops at the mark for good.
func TestPipeUrgentData(t *testing.T) { bothWays(t, testPipeUrgentData) }

func testPipeUrgentData(t *testing.T, splice bool) {
	const head = 1 << 20
	cases := []struct {
		name  string
		pause bool // between the head and the urgent byte: splicing by then
		tail  int  // bytes after the urgent byte
		endAt bool // the end right after the tail, not 300 ms later
	}{
		{"pause/end-later", true, 1 << 20, false},
		{"pause/end-at-once", true, 1 << 20, true},
		// The urgent byte and the end come while the loop splices the
		// head: a splice may meet the mark before the poller's report.
		{"no-pause/short-tail/end-at-once", false, 100, true},
	}
	for _, fromBackend := range []bool{false, true} {
		for _, tc := range cases {
			t.Run(fmt.Sprintf("fromBackend=%v/%s", fromBackend, tc.name), func(t *testing.T) {
				h := sha256.New()
				writeStream(h, 1, head)
				writeStream(h, 2, tc.tail)
				want, total := [32]byte(h.Sum(nil)), int64(head+tc.tail)
				send := func(c *net.TCPConn) error {
					if err := writeStream(c, 1, head); err != nil {
						return err
					}
					if tc.pause {
						time.Sleep(100 * time.Millisecond)
					}
					if err := sendUrgent(c); err != nil {
						return err
					}
					if err := writeStream(c, 2, tc.tail); err != nil {
						return err
					}
					if !tc.endAt {
						time.Sleep(300 * time.Millisecond)
					}
					return c.CloseWrite()
				}
				backendGot := make(chan streamGot, 1)
				var ln net.Listener
				if fromBackend {
					ln = serveEach(t, func(c *net.TCPConn) {
						c.SetDeadline(time.Now().Add(20 * time.Second))
						err := send(c)
						io.Copy(io.Discard, c)
						backendGot <- streamGot{err: err}
					})
				} else {
					ln = sumBackend(t, backendGot)
				}
				p := startPipeProxy(t, ln.Addr().String(), 1, splice)
				c := dialTCP(t, p.addr)
				var g streamGot
				if fromBackend {
					c.CloseWrite()
					g.n, g.sum, g.err = readSum(c)
				} else {
					if err := send(c); err != nil {
						t.Fatal(err)
					}
					io.Copy(io.Discard, c)
					g = <-backendGot
				}
				if fromBackend {
					if b := <-backendGot; b.err != nil {
						t.Fatal(b.err)
					}
				}
				if g.err != nil || g.n != total || g.sum != want {
					t.Errorf("the receiver got %d bytes (want %d), intact %v, err %v", g.n, total, g.sum == want, g.err)
				}
				r := p.result(t)
				sent := r.aToB
				if fromBackend {
					sent = r.bToA
				}
				if !r.clean || sent != uint64(total) {
					t.Errorf("pipe reported %d bytes forwarded (want %d), clean %v", sent, total, r.clean)
				}
				var spliced uint64
				for _, l := range p.w.Stats().Loops {
					spliced += l.Spliced
				}
				if splice && spliced == 0 {
					t.Errorf("nothing spliced: the test did not reach the splicing path")
				}
			})
		}
	}
}

// TestPipeAfterUrgentData: urgent data came before the pipe. The read
// that stopped at its mark is the pipe's Early input, large enough to
// splice what follows; the bytes behind the mark must still be forwarded
// (spliced, they stalled there: splice(2) stops at the mark for good, and
// nothing more was reported).
func TestPipeAfterUrgentData(t *testing.T) { bothWays(t, testPipeAfterUrgentData) }

func testPipeAfterUrgentData(t *testing.T, splice bool) {
	const head, tail = 20 << 10, 100
	backendGot := make(chan error, 1)
	ln := serveEach(t, func(c *net.TCPConn) {
		// All of it before the client ends its stream (which would show
		// splice(2) something it can take for the end: see
		// TestSpliceEndAtUrgentMark).
		c.SetDeadline(time.Now().Add(3 * time.Second))
		n, err := io.ReadFull(c, make([]byte, head+tail))
		if err != nil {
			err = fmt.Errorf("the backend got %d bytes of %d: %w", n, head+tail, err)
		}
		backendGot <- err
	})
	w := &Worker{Addr: "tcp://127.0.0.1:0", Count: 1}
	backends := make(chan *Conn, 1)
	w.OnConnect = func(c *Conn) {
		c.Loop().Dial(context.Background(), ln.Addr().String(), &Dialer{OnConnect: func(b *Conn) { backends <- b }})
	}
	w.OnMessage = func(c *Conn, msg []byte) {
		if err := Pipe(c, <-backends, &PipeOptions{Splice: splice, Early: msg}); err != nil {
			t.Errorf("Pipe: %v", err)
		}
	}
	c := dialTCP(t, startWorker(t, w).addr)
	waitFor(t, 5*time.Second, "the backend dialed", func() bool { return len(backends) == 1 })

	// Hold the loop until the head, the urgent byte and the tail are all
	// in its socket: its first read stops at the mark.
	parked, release := make(chan struct{}), make(chan struct{})
	w.Loops()[0].Post(func() { close(parked); <-release })
	<-parked
	writeStream(c, 1, head)
	if err := sendUrgent(c); err != nil {
		t.Fatal(err)
	}
	writeStream(c, 2, tail)
	time.Sleep(50 * time.Millisecond)
	close(release)

	if err := <-backendGot; err != nil {
		t.Fatal(err)
	}
}

// sendUrgent sends one byte of TCP urgent data.
func sendUrgent(c *net.TCPConn) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Write(func(fd uintptr) bool {
		serr = unix.Sendto(int(fd), []byte{'!'}, unix.MSG_OOB, nil)
		return serr != unix.EAGAIN
	}); err != nil {
		return err
	}
	return serr
}

// TestPipeStalledClient: a client that reads nothing while the backend
// streams 64 MB (16 without HERD_SOAK); the proxy holds a bounded amount (its high mark and a
// read or two), then delivers everything once the client reads.
func TestPipeStalledClient(t *testing.T) { bothWays(t, testPipeStalledClient) }

func testPipeStalledClient(t *testing.T, splice bool) {
	size := 64 << 20
	if !soak.Enabled() {
		size = 16 << 20 // still far past what the proxy and the kernel hold
	}
	ln := serveEach(t, func(c *net.TCPConn) {
		writeStream(c, 7, size)
		c.CloseWrite()
		io.Copy(io.Discard, c)
	})
	p := startPipeProxy(t, ln.Addr().String(), 1, splice)
	c := p.dialSmallBufs(t, 64<<10)
	// The client reads nothing. (A fixed pause here was too short under
	// a loaded CI machine: the proxy had queued nothing yet.)
	start := time.Now()
	waitFor(t, 20*time.Second, "bytes queued for the stalled client", func() bool { return sumStats(p.w).queued > 0 })
	t.Logf("the first bytes queued after %v", time.Since(start))
	time.Sleep(100 * time.Millisecond)
	var peak int64
	for i := 0; i < 20; i++ {
		peak = max(peak, sumStats(p.w).queued)
		time.Sleep(10 * time.Millisecond)
	}
	bound := int64(p.w.highWater() + 2*readBufferSize)
	if peak == 0 || peak > bound {
		t.Fatalf("the proxy queued %d bytes for a stalled client; want some, at most %d", peak, bound)
	}
	t.Logf("queued for the stalled client: %d bytes (bound %d)", peak, bound)
	c.(*net.TCPConn).CloseWrite()
	n, sum, err := readSum(c)
	if err != nil || n != int64(size) || sum != streamSum(7, size) {
		t.Fatalf("got %d bytes of %d, intact %v, err %v", n, size, sum == streamSum(7, size), err)
	}
	if r := p.result(t); !r.clean || r.bToA != uint64(size) {
		t.Fatalf("pipe result %+v", r)
	}
}

// TestPipeAbortPassesOn: a backend that resets mid-stream resets the
// client's connection (it is not left open, nor ended as if whole); and a
// client that resets resets the backend's.
func TestPipeAbortPassesOn(t *testing.T) { bothWays(t, testPipeAbortPassesOn) }

func testPipeAbortPassesOn(t *testing.T, splice bool) {
	t.Run("backend resets", func(t *testing.T) {
		ln := serveEach(t, func(c *net.TCPConn) {
			writeStream(c, 1, 1<<20)
			time.Sleep(50 * time.Millisecond)
			c.SetLinger(0) // close with a reset
		})
		p := startPipeProxy(t, ln.Addr().String(), 1, splice)
		c := p.dial(t)
		n, _, err := readSum(c)
		if !isReset(err) {
			t.Fatalf("client read %d bytes, then %v; want a reset", n, err)
		}
		if n != 1<<20 {
			t.Fatalf("client read %d bytes before the reset; want the %d sent", n, 1<<20)
		}
		if r := p.result(t); r.clean {
			t.Fatalf("pipe reported clean after a reset")
		}
	})
	t.Run("client resets", func(t *testing.T) {
		backendErr := make(chan error, 1)
		ln := serveEach(t, func(c *net.TCPConn) {
			_, _, err := readSum(c)
			backendErr <- err
		})
		p := startPipeProxy(t, ln.Addr().String(), 1, splice)
		c := p.dial(t)
		c.Write(make([]byte, 1000))
		time.Sleep(50 * time.Millisecond)
		c.(*net.TCPConn).SetLinger(0)
		c.Close()
		select {
		case err := <-backendErr:
			if !isReset(err) {
				t.Fatalf("backend saw %v; want a reset", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("the backend's connection was left open")
		}
	})
	t.Run("backend refuses", func(t *testing.T) {
		p := startPipeProxy(t, refusedAddr(t), 1, splice)
		start := time.Now()
		// The reset may come before the client's connect has been
		// reported done: then the dial fails with it.
		c, err := net.DialTimeout("tcp", p.addr, 5*time.Second)
		if err == nil {
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			_, err = c.Read(make([]byte, 1))
		}
		if !isReset(err) {
			t.Fatalf("client got %v; want a reset", err)
		}
		if took := time.Since(start); took > 5*time.Second || p.failed.Load() != 1 {
			t.Fatalf("closed after %v, failed dials %d", took, p.failed.Load())
		}
	})
}

// TestPipeIdleTimeoutResets: IdleTimeout cutting a piped stream in the
// middle resets both connections, so that neither peer takes the part it
// got for the whole: a backend that sends 100 of the 1,000 bytes it
// promised and stalls leaves its client with a reset after the 100 bytes,
// not an end of stream; a client that does so leaves the backend with
// one. (The idle sweep used to Close both ends in one pass, and each peer
// saw an end of stream before Pipe's reset could come.)
func TestPipeIdleTimeoutResets(t *testing.T) { bothWays(t, testPipeIdleTimeoutResets) }

func testPipeIdleTimeoutResets(t *testing.T, splice bool) {
	const idle = 200 * time.Millisecond
	// readCut reads c to its end and reports how many bytes came, and
	// how it ended.
	readCut := func(c net.Conn) (int64, error) {
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		return io.Copy(io.Discard, c)
	}
	t.Run("backend stalls", func(t *testing.T) {
		ln := serveEach(t, func(c *net.TCPConn) {
			c.Write(make([]byte, 100)) // of 1,000
			io.Copy(io.Discard, c)     // and nothing more, until cut
		})
		p := startPipeProxyOn(t, &Worker{Addr: "tcp://127.0.0.1:0", Count: 1, IdleTimeout: idle}, ln.Addr().String(), splice)
		c := p.dial(t)
		n, err := readCut(c)
		if n != 100 || !isReset(err) {
			t.Fatalf("client read %d bytes, then %v; want 100, then a reset", n, err)
		}
		if r := p.result(t); r.clean || r.bToA != 100 {
			t.Fatalf("pipe reported %+v", r)
		}
	})
	t.Run("client stalls", func(t *testing.T) {
		type cut struct {
			n   int64
			err error
		}
		backend := make(chan cut, 1)
		ln := serveEach(t, func(c *net.TCPConn) {
			n, err := readCut(c)
			backend <- cut{n, err}
		})
		p := startPipeProxyOn(t, &Worker{Addr: "tcp://127.0.0.1:0", Count: 1, IdleTimeout: idle}, ln.Addr().String(), splice)
		c := p.dial(t)
		c.Write(make([]byte, 100)) // of 1,000, and nothing more
		select {
		case got := <-backend:
			if got.n != 100 || !isReset(got.err) {
				t.Fatalf("backend read %d bytes, then %v; want 100, then a reset", got.n, got.err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("the backend's connection was left open")
		}
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Read(make([]byte, 1)); !isReset(err) {
			t.Fatalf("client read %v; want a reset", err)
		}
	})
}

// TestPipeSoftStop: a graceful stop lets a stream in flight through a
// pipe finish (a backend answering in 6 chunks over 1.5s, the stop begun
// after the first: all 6 arrive, then the end of stream), as HAProxy's
// soft stop does; when the stop's context ends first, both sides are
// reset, not ended as if whole. (The stop used to close both connections
// at once: the client got the chunks so far and a clean end.)
func TestPipeSoftStop(t *testing.T) {
	t.Parallel() // its time is spent waiting for the backend's chunks
	bothWays(t, testPipeSoftStop)
}

func testPipeSoftStop(t *testing.T, splice bool) {
	const chunks, size, every = 6, 1000, 250 * time.Millisecond
	// backend answers each connection in chunks, then ends its stream and
	// reports how its side ended.
	backend := func(ended chan<- error) net.Listener {
		return serveEach(t, func(c *net.TCPConn) {
			var err error
			for i := 0; i < chunks && err == nil; i++ {
				if i > 0 {
					time.Sleep(every)
				}
				_, err = c.Write(make([]byte, size))
			}
			if err == nil {
				c.CloseWrite()
				c.SetReadDeadline(time.Now().Add(10 * time.Second))
				_, err = io.Copy(io.Discard, c) // to the client's end
			}
			ended <- err
		})
	}
	// stopDuring starts the stream, begins a stop with the given timeout
	// once the first chunk has come, and reads to the end.
	stopDuring := func(t *testing.T, timeout time.Duration, ended chan error) (n int64, readErr, stopErr error) {
		p := startPipeProxyOn(t, &Worker{Addr: "tcp://127.0.0.1:0", Count: 1}, backend(ended).Addr().String(), splice)
		c := p.dial(t)
		if _, err := io.ReadFull(c, make([]byte, size)); err != nil {
			t.Fatalf("first chunk: %v", err)
		}
		stopped := make(chan error, 1)
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), timeout)
			defer cancel()
			stopped <- p.w.Shutdown(ctx)
		}()
		n, readErr = io.Copy(io.Discard, c)
		c.Close()
		select {
		case stopErr = <-stopped:
		case <-time.After(20 * time.Second):
			t.Fatal("Shutdown did not return")
		}
		return n + size, readErr, stopErr
	}
	t.Run("finishes", func(t *testing.T) {
		ended := make(chan error, 1)
		n, readErr, stopErr := stopDuring(t, 10*time.Second, ended)
		if n != chunks*size || readErr != nil || stopErr != nil {
			t.Fatalf("client read %d bytes, then %v (Shutdown: %v); want %d and the end of stream", n, readErr, stopErr, chunks*size)
		}
		if err := <-ended; err != nil {
			t.Fatalf("backend's side: %v", err)
		}
	})
	t.Run("cut at the stop's end", func(t *testing.T) {
		ended := make(chan error, 1)
		n, readErr, stopErr := stopDuring(t, 2*every, ended)
		if n >= chunks*size || !isReset(readErr) || stopErr != context.DeadlineExceeded {
			t.Fatalf("client read %d bytes, then %v (Shutdown: %v); want fewer than %d, then a reset", n, readErr, stopErr, chunks*size)
		}
		if err := <-ended; !isReset(err) {
			t.Fatalf("backend's side: %v; want a reset", err)
		}
	})
}

// TestPipeConcurrent: 1,000 proxied connections at once, each echoing 10
// lines through the pipe.
func TestPipeConcurrent(t *testing.T) { bothWays(t, testPipeConcurrent) }

func testPipeConcurrent(t *testing.T, splice bool) {
	n := 1000
	if !soak.Enabled() {
		n = 100
	}
	ln := lineEchoServer(t, "tcp", "127.0.0.1:0")
	p := startPipeProxy(t, ln.Addr().String(), 2, splice)
	var wg sync.WaitGroup
	var failures atomic.Int32
	conns := make([]net.Conn, n)
	for i := range conns {
		c, err := net.DialTimeout("tcp", p.addr, 5*time.Second)
		if err != nil {
			t.Fatalf("dial %d: %v", i, err)
		}
		conns[i] = c
		defer c.Close()
	}
	for i, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.SetDeadline(time.Now().Add(30 * time.Second))
			br := bufio.NewReader(c)
			for j := 0; j < 10; j++ {
				line := fmt.Sprintf("conn %d line %d\n", i, j)
				if _, err := c.Write([]byte(line)); err != nil {
					failures.Add(1)
					return
				}
				got, err := br.ReadString('\n')
				if err != nil || got != line {
					failures.Add(1)
					return
				}
			}
		}()
	}
	wg.Wait()
	if f := failures.Load(); f != 0 {
		t.Fatalf("%d of %d connections failed", f, n)
	}
	s := sumStats(p.w)
	if s.active != int64(2*n) {
		t.Fatalf("active %d; want %d (each client and its backend)", s.active, 2*n)
	}
	// Idle piped connections hold no kernel pipe: this process has the
	// n clients, the n backend connections and the proxy's 2n, and only a
	// pool's worth of pipes besides.
	fds, _ := os.ReadDir("/proc/self/fd")
	if len(fds) > 4*n+2*2*maxPooledPipesAny+100 {
		t.Fatalf("%d descriptors open for %d idle proxied connections (4 each)", len(fds), n)
	}
	t.Logf("%d descriptors open for %d idle proxied connections", len(fds), n)
}

// bothWays runs a Pipe test copying and splicing.
func bothWays(t *testing.T, f func(t *testing.T, splice bool)) {
	t.Run("copy", func(t *testing.T) { f(t, false) })
	t.Run("splice", func(t *testing.T) {
		if !spliceSupported {
			t.Skip("no splice(2) here")
		}
		f(t, true)
	})
}

// maxPooledPipesAny is maxPooledPipes where there is splicing.
const maxPooledPipesAny = 32
