//go:build linux || darwin || freebsd

package herd

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/seed358e4494/herd/internal/soak"
)

// Helpers shared by echo_test.go and distribution_test.go carry an "ed"
// prefix so that they stay clear of the names in the package's other test
// files.

// edLogWriter sends a worker's log lines to the test log.
type edLogWriter struct {
	t      testing.TB
	errors *atomic.Int64
}

func (w edLogWriter) Write(p []byte) (int, error) {
	if bytes.Contains(p, []byte("level=ERROR")) {
		w.errors.Add(1)
	}
	w.t.Logf("worker log: %s", bytes.TrimRight(p, "\n"))
	return len(p), nil
}

// edServer is a worker running in the background for one test.
type edServer struct {
	t      testing.TB
	w      *Worker
	addr   string
	cancel context.CancelFunc
	runErr chan error
	errors atomic.Int64 // error-level log records
	once   sync.Once
}

// edStart binds w on a free loopback port and runs it until stop (or the
// test's cleanup). The worker's warnings and errors go to the test log;
// errors fail the test.
func edStart(t testing.TB, w *Worker) *edServer {
	t.Helper()
	s := &edServer{t: t, w: w, runErr: make(chan error, 1)}
	if w.Logger == nil {
		w.Logger = slog.New(slog.NewTextHandler(edLogWriter{t, &s.errors}, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	if err := w.Listen(); err != nil {
		t.Fatalf("Listen: %v", err)
	}
	s.addr = w.ListenAddr().String()
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	go func() { s.runErr <- w.Run(ctx) }()
	t.Cleanup(func() { s.stop() })
	return s
}

// stop ends Run (gracefully: the clients should have closed their
// connections already) and waits for it to return, at most 10 seconds.
func (s *edServer) stop() {
	s.once.Do(func() {
		s.cancel()
		select {
		case err := <-s.runErr:
			if err != nil {
				s.t.Errorf("Run: %v", err)
			}
		case <-time.After(10 * time.Second):
			s.t.Errorf("Run did not return within 10s of its context ending\n%v", s.w.Stats())
		}
		if n := s.errors.Load(); n > 0 {
			s.t.Errorf("the worker logged %d errors", n)
		}
	})
}

// edSum adds up one counter over the loops.
func edSum(st Stats, f func(LoopStats) uint64) uint64 {
	var n uint64
	for _, l := range st.Loops {
		n += f(l)
	}
	return n
}

func edAccepted(l LoopStats) uint64   { return l.Accepted }
func edClosed(l LoopStats) uint64     { return l.Closed }
func edMessagesIn(l LoopStats) uint64 { return l.MessagesIn }
func edBytesIn(l LoopStats) uint64    { return l.BytesIn }
func edBytesOut(l LoopStats) uint64   { return l.BytesOut }
func edDropped(l LoopStats) uint64    { return l.Dropped }
func edActive(l LoopStats) uint64     { return uint64(max(l.Active, 0)) }

// edWaitFor polls cond until it holds or ctx ends; it reports whether cond
// held.
func edWaitFor(ctx context.Context, cond func() bool) bool {
	for !cond() {
		select {
		case <-ctx.Done():
			return cond()
		case <-time.After(time.Millisecond):
		}
	}
	return true
}

// edSeed is the seed of the random payloads: $HERD_TEST_SEED when set, so
// that a failure can be replayed, else the clock.
func edSeed(t testing.TB) uint64 {
	if s := os.Getenv("HERD_TEST_SEED"); s != "" {
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("HERD_TEST_SEED=%q: %v", s, err)
		}
		return n
	}
	return uint64(time.Now().UnixNano())
}

// edFailures reports the first few of many concurrent client failures and
// counts the rest.
type edFailures struct {
	t testing.TB
	n atomic.Int64
}

func (f *edFailures) add(format string, args ...any) {
	if f.n.Add(1) <= 5 {
		f.t.Errorf(format, args...)
	}
}

func (f *edFailures) report() {
	if n := f.n.Load(); n > 5 {
		f.t.Errorf("... and %d more client failures", n-5)
	}
}

// echoWire is how a test message travels for each protocol.
type echoWire int

const (
	echoRaw   echoWire = iota // the bytes as they are; the server echoes each read
	echoText                  // letters and a "\n"
	echoFrame                 // 4-byte big-endian total length, then the bytes
)

// TestEcho runs 1,000 concurrent connections with HERD_SOAK (100 without) against an
// echo server for every protocol and listen mode. Each connection sends a few
// messages of random sizes up to 64 KiB, written in random fragments, and
// must read back exactly the bytes it sent, in order.
func TestEcho(t *testing.T) {
	protocols := []struct {
		name   string
		scheme string
		wire   echoWire
	}{
		{"raw", "tcp", echoRaw},
		{"text", "text", echoText},
		{"frame", "frame", echoFrame},
	}
	conns := 1000
	if !soak.Enabled() {
		conns = 100
	}
	seed := edSeed(t)
	t.Logf("seed %d (set HERD_TEST_SEED to replay)", seed)

	// Payloads are slices of one random pool at random offsets: cheap to
	// make under -race, and different for every message. Text payloads come
	// from a pool of letters, so that they hold no line ending.
	rng := rand.New(rand.NewPCG(seed, 0))
	const poolSize = 1 << 20
	binaryPool := make([]byte, poolSize)
	letterPool := make([]byte, poolSize)
	for i := 0; i < poolSize; i += 8 {
		binary.LittleEndian.PutUint64(binaryPool[i:], rng.Uint64())
	}
	const letters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
	for i := range letterPool {
		letterPool[i] = letters[rng.IntN(len(letters))]
	}

	sub := uint64(0)
	for _, p := range protocols {
		for _, m := range listenModes {
			sub++
			subSeed := seed + sub
			pool := binaryPool
			if p.wire == echoText {
				pool = letterPool
			}
			t.Run(p.name+"/"+m.name, func(t *testing.T) {
				w := &Worker{
					Name:      "echo-" + p.name + "-" + m.name,
					Addr:      p.scheme + "://127.0.0.1:0",
					Count:     4,
					ReusePort: m.reusePort,
					Accept:    m.accept,
					OnMessage: func(c *Conn, msg []byte) { c.Send(msg) },
				}
				echoRun(t, w, p.wire, conns, subSeed, pool)
			})
		}
	}
}

// echoMessageSize draws a message size: from empty (protocols only) to
// 64 KiB, a fifth of them 16 KiB or more, so that large messages span
// several server reads while the total stays near 30 MB per subtest under
// -race.
func echoMessageSize(rng *rand.Rand, wire echoWire) int {
	switch r := rng.IntN(100); {
	case r < 2 && wire != echoRaw:
		return 0 // an empty message: a bare "\n" or a bare header
	case r < 40:
		return 1 + rng.IntN(256)
	case r < 65:
		return 257 + rng.IntN(4096-256)
	case r < 80:
		return 4097 + rng.IntN(16384-4096)
	case r < 95:
		return 16385 + rng.IntN(65536-16384)
	default:
		return 65536
	}
}

// echoFragments splits b into 1 to 8 pieces of random lengths.
func echoFragments(rng *rand.Rand, b []byte) [][]byte {
	n := 1 + rng.IntN(8)
	var out [][]byte
	for i := n; i > 1 && len(b) > 1; i-- {
		cut := 1 + rng.IntN(len(b)-1)
		if rng.IntN(2) == 0 {
			cut = 1 + rng.IntN(min(len(b)-1, 16)) // a few tiny ones: split headers
		}
		out = append(out, b[:cut])
		b = b[cut:]
	}
	return append(out, b)
}

func echoRun(t *testing.T, w *Worker, wire echoWire, conns int, seed uint64, pool []byte) {
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
	defer cancel()
	deadline, _ := ctx.Deadline()
	t.Logf("subtest seed %d (derived from TestEcho's seed)", seed)
	srv := edStart(t, w)
	begin := time.Now()

	// Phase 1: open every connection, at most 64 dials at a time so that the
	// SYN and accept queues never overflow; all stay open together.
	clients := make([]net.Conn, conns)
	defer func() {
		for _, c := range clients {
			if c != nil {
				c.Close()
			}
		}
	}()
	fail := &edFailures{t: t}
	defer fail.report()
	dialer := net.Dialer{Deadline: deadline}
	sem := make(chan struct{}, 64)
	var wg sync.WaitGroup
	for i := range clients {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			c, err := dialer.DialContext(ctx, "tcp", srv.addr)
			if err != nil {
				fail.add("conn %d: dial: %v", i, err)
				return
			}
			c.SetDeadline(deadline)
			clients[i] = c
		}()
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	if !edWaitFor(ctx, func() bool { return edSum(w.Stats(), edActive) == uint64(conns) }) {
		t.Fatalf("server has %d of %d connections open\n%v", edSum(w.Stats(), edActive), conns, w.Stats())
	}

	// Phase 2: every connection at once writes its messages in fragments,
	// then reads the echo. The server never stops reading and queues what
	// the socket does not take (far below MaxSendBufferSize), so writing
	// everything before reading cannot deadlock.
	var sentMsgs, sentBytes atomic.Uint64
	took := make([]time.Duration, conns) // per connection, for the log
	dialed := time.Since(begin)
	start := time.Now()
	for i, c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { took[i] = time.Since(start) }()
			rng := rand.New(rand.NewPCG(seed, uint64(i)+1))
			var want []byte
			nmsg := 2 + rng.IntN(2)
			for range nmsg {
				size := echoMessageSize(rng, wire)
				off := rng.IntN(len(pool) - size + 1)
				msg := pool[off : off+size]
				start := len(want)
				switch wire {
				case echoRaw:
					want = append(want, msg...)
				case echoText:
					want = append(want, msg...)
					want = append(want, '\n')
				case echoFrame:
					want = binary.BigEndian.AppendUint32(want, uint32(size+4))
					want = append(want, msg...)
				}
				for _, frag := range echoFragments(rng, want[start:]) {
					if _, err := c.Write(frag); err != nil {
						fail.add("conn %d: write: %v", i, err)
						return
					}
				}
			}
			sentMsgs.Add(uint64(nmsg))
			sentBytes.Add(uint64(len(want)))
			got := make([]byte, len(want))
			n, err := io.ReadFull(c, got)
			if err != nil {
				fail.add("conn %d: read %d of %d echoed bytes: %v", i, n, len(want), err)
				return
			}
			if !bytes.Equal(got, want) {
				at := 0
				for at < len(got) && got[at] == want[at] {
					at++
				}
				fail.add("conn %d: echo differs from what was sent at byte %d of %d", i, at, len(want))
				return
			}
			// Nothing more may arrive: the echo is exactly what was sent.
			c.SetReadDeadline(time.Now().Add(5 * time.Millisecond))
			var extra [1]byte
			if n, err := c.Read(extra[:]); n > 0 || !edIsTimeout(err) {
				fail.add("conn %d: after the echo, read %d bytes, err %v; want a timeout", i, n, err)
			}
		}()
	}
	wg.Wait()
	echoed := time.Since(start)
	if t.Failed() {
		return
	}
	for i, c := range clients {
		c.Close()
		clients[i] = nil
	}
	start = time.Now()
	if !edWaitFor(ctx, func() bool { return edSum(w.Stats(), edClosed) == uint64(conns) }) {
		t.Errorf("server closed %d of %d connections", edSum(w.Stats(), edClosed), conns)
	}
	closed := time.Since(start)
	srv.stop()
	slices.Sort(took)
	ms := func(d time.Duration) time.Duration { return d.Round(time.Millisecond) }
	t.Logf("timing, informative only: dial %v; echo %v (median connection %v, slowest %v); close %v; stop %v",
		ms(dialed), ms(echoed), ms(took[conns/2]), ms(took[conns-1]), ms(closed), ms(time.Since(start)-closed))

	st := w.Stats()
	t.Logf("%d connections, %d messages, %d bytes each way\n%v", conns, sentMsgs.Load(), sentBytes.Load(), st)
	if got := edSum(st, edAccepted); got != uint64(conns) {
		t.Errorf("accepted %d connections, want %d", got, conns)
	}
	if wire != echoRaw {
		if got := edSum(st, edMessagesIn); got != sentMsgs.Load() {
			t.Errorf("MessagesIn = %d, want %d", got, sentMsgs.Load())
		}
	}
	if got := edSum(st, edBytesIn); got != sentBytes.Load() {
		t.Errorf("BytesIn = %d, want %d", got, sentBytes.Load())
	}
	if got := edSum(st, edBytesOut); got != sentBytes.Load() {
		t.Errorf("BytesOut = %d, want %d", got, sentBytes.Load())
	}
	if got := edSum(st, edDropped); got != 0 {
		t.Errorf("Dropped = %d, want 0", got)
	}
	if st.Rejected != 0 {
		t.Errorf("Rejected = %d, want 0", st.Rejected)
	}
}

// edIsTimeout reports whether err is a deadline's timeout.
func edIsTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
