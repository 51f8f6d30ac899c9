//go:build linux

package balancer

import (
	"context"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/seed358e4494/herd"
	"github.com/seed358e4494/herd/internal/herdtest"
	"github.com/seed358e4494/herd/internal/loopback"
)

// errorCounter is a slog.Handler that counts records at Error and above
// (a panic recovered on a loop is one) and drops the rest.
type errorCounter struct{ n *atomic.Int64 }

func (h errorCounter) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelError }
func (h errorCounter) Handle(context.Context, slog.Record) error    { h.n.Add(1); return nil }
func (h errorCounter) WithAttrs([]slog.Attr) slog.Handler           { return h }
func (h errorCounter) WithGroup(string) slog.Handler                { return h }

// TestActiveCountsUnderResets: 5,000 clients that reset at random moments
// around their backend's connect (at once, or within a millisecond or two,
// some after sending a byte) and 5,000 that are served whole leave every
// backend's active count at 0, and it is never negative meanwhile; least
// connections then splits 200 long-lived clients evenly. Before each
// session's count was its own (added and taken once), a client's close
// and its backend's connect completing in the same turn took it twice:
// -250 per backend after a churn of 3,000, and 199 of 200 clients then went
// to that backend. The clients come 64 at a time (each costs 4 descriptors
// in this process: client, accepted, dialed, backend's).
func TestActiveCountsUnderResets(t *testing.T) {
	const (
		resets, served = 5000, 5000
		parallel       = 64
		longLived      = 200
	)
	var bes []Backend
	for i := 0; i < 2; i++ {
		bes = append(bes, Backend{Addr: startBackend(t, idServer(byte(i))).addr})
	}
	var errorsLogged atomic.Int64
	b := &Balancer{Backends: bes, Algorithm: LeastConns, Logger: quiet}
	addr := runBalancer(t, b, func(w *herd.Worker) { w.Logger = slog.New(errorCounter{&errorsLogged}) })

	// Watch the counts while the clients come and go.
	var lowest atomic.Int64
	stop := make(chan struct{})
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		for {
			for _, be := range b.Stats().Backends {
				if be.Active < lowest.Load() {
					lowest.Store(be.Active)
				}
			}
			select {
			case <-stop:
				return
			case <-time.After(200 * time.Microsecond):
			}
		}
	}()

	var failed atomic.Int64
	jobs := make(chan bool, parallel) // true: reset, false: serve whole
	var wg sync.WaitGroup
	for range parallel {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for reset := range jobs {
				if reset {
					resetSoon(addr)
					continue
				}
				id, c, err := askID(addr, nil)
				if err != nil || id > 1 {
					failed.Add(1)
					continue
				}
				c.Close()
			}
		}()
	}
	for i := 0; i < resets+served; i++ {
		jobs <- i%2 == 0
	}
	close(jobs)
	wg.Wait()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		s := b.Stats().Backends
		if s[0].Active == 0 && s[1].Active == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("active counts %d and %d 10s after the last client (lowest seen %d)", s[0].Active, s[1].Active, lowest.Load())
		}
	}
	close(stop)
	<-watched
	if f := failed.Load(); f != 0 {
		t.Errorf("%d of %d clients served whole failed", f, served)
	}
	if l := lowest.Load(); l < 0 {
		t.Fatalf("an active count went down to %d", l)
	}
	if n := errorsLogged.Load(); n != 0 {
		t.Fatalf("the worker logged %d errors (a panic in a callback is one)", n)
	}

	counts := make([]int, 2)
	for i := 0; i < longLived; i++ {
		id, c, err := askID(addr, nil)
		if err != nil {
			t.Fatalf("long-lived client %d: %v", i, err)
		}
		defer c.Close()
		counts[id]++
	}
	t.Logf("after %d resets and %d served: lowest active count %d; %d long-lived clients split %v", resets, served, lowest.Load(), longLived, counts)
	for i, n := range counts {
		if n < longLived/2*95/100 || n > longLived/2*105/100 {
			t.Fatalf("backend %d holds %d of %d long-lived clients, want %d±5%%", i, n, longLived, longLived/2)
		}
	}
}

// resetSoon connects to addr and resets the connection at once, or after
// up to 2ms, some of the time after sending a byte.
func resetSoon(addr string) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return
	}
	tc := c.(*net.TCPConn)
	switch r := rand.IntN(4); r {
	case 0:
	case 1:
		tc.Write([]byte("x"))
		fallthrough
	default:
		time.Sleep(time.Duration(rand.IntN(2000)) * time.Microsecond)
	}
	tc.SetLinger(0)
	tc.Close()
}

// TestStopWhileConnecting: a client whose backend is still connecting
// when the worker stops gracefully is closed at once (no backend took it),
// not held until the stop's context ends, and its session leaves the
// active count.
func TestStopWhileConnecting(t *testing.T) {
	b := &Balancer{Backends: []Backend{{Addr: loopback.SilentAddr(t)}}, ConnectTimeout: time.Minute, Logger: quiet}
	w := &herd.Worker{Addr: "tcp://127.0.0.1:0", Count: 1, Logger: quiet}
	if err := b.Attach(w); err != nil {
		t.Fatal(err)
	}
	addr := herdtest.Run(t, w)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("hello?"))
	herdtest.WaitFor(t, "the connect under way", func() bool { return b.Stats().Backends[0].Active == 1 })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stopped := make(chan error, 1)
	go func() { stopped <- w.Shutdown(ctx) }()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := c.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Fatalf("client read %d bytes, %v; want the end of stream", n, err)
	}
	c.Close()
	if err := <-stopped; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if a := b.Stats().Backends[0].Active; a != 0 {
		t.Fatalf("active count %d after the stop", a)
	}
}
