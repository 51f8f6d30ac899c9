//go:build linux

package balancer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
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
	t.Parallel()
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
// when the worker stops gracefully is served whole: the connect goes on,
// the session is piped once it completes and ends as the stream does, and
// Shutdown returns once it has. Before, the stop closed the client at once
// with nothing (a session in flight lost, where HAProxy's soft stop lets
// it finish).
func TestStopWhileConnecting(t *testing.T) {
	t.Parallel()
	backend, open := loopback.LateAddr(t)
	b, w, c := connectingSession(t, backend, nil)
	stopped := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		stopped <- w.Shutdown(ctx)
	}()
	// The backend comes up after the stop began; the connect completes at
	// its next SYN.
	time.Sleep(100 * time.Millisecond)
	ln := open()
	go func() {
		s, err := ln.Accept()
		if err != nil {
			return
		}
		defer s.Close()
		s.SetDeadline(time.Now().Add(10 * time.Second))
		q := make([]byte, len("hello?"))
		if _, err := io.ReadFull(s, q); err == nil {
			s.Write(append([]byte("answer to "), q...))
		}
	}()
	c.SetReadDeadline(time.Now().Add(15 * time.Second))
	got, err := io.ReadAll(c)
	if err != nil || string(got) != "answer to hello?" {
		t.Fatalf("client read %q, %v; want the whole answer and the end of stream", got, err)
	}
	c.Close() // both peers have ended: the pipe closes, and the stop is done
	if err := <-stopped; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if a := b.Stats().Backends[0].Active; a != 0 {
		t.Fatalf("active count %d after the stop", a)
	}
}

// TestStopTimeoutWhileConnecting: a session whose connect has not
// completed when the stop's context ends is cut, and its client sees a
// reset, not an end of stream that could pass for a whole (empty) answer;
// whichever of the two connections the stop closes first, the backend is
// not blamed for the connect the stop ended.
func TestStopTimeoutWhileConnecting(t *testing.T) {
	for _, backendFirst := range []bool{false, true} {
		t.Run(fmt.Sprintf("backend-closed-first=%v", backendFirst), func(t *testing.T) {
			var tune func(*herd.Worker)
			if backendFirst {
				tune = dialFirst(t)
			}
			b, w, c := connectingSession(t, loopback.SilentAddr(t), tune)
			ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
			defer cancel()
			if err := w.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("Shutdown: %v, want the context's deadline", err)
			}
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			if n, err := c.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
				t.Fatalf("client read %d bytes, %v; want a reset", n, err)
			}
			if st := b.Stats().Backends[0]; st.Active != 0 || st.ConnectErrors != 0 {
				t.Fatalf("after the stop: active count %d, %d connect errors (the stop is not the backend's fault)", st.Active, st.ConnectErrors)
			}
		})
	}
}

// connectingSession runs a balancer on one loop whose single backend is
// at backend, and connects a client that sends "hello?", once the
// backend's connect is under way. tune, if set, adjusts the worker.
func connectingSession(t *testing.T, backend string, tune func(w *herd.Worker)) (*Balancer, *herd.Worker, net.Conn) {
	t.Helper()
	b := &Balancer{Backends: []Backend{{Addr: backend}}, ConnectTimeout: time.Minute}
	var w *herd.Worker
	addr := runBalancer(t, b, func(rw *herd.Worker) {
		w = rw
		w.Count = 1
		if tune != nil {
			tune(w)
		}
	})
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.Write([]byte("hello?"))
	herdtest.WaitFor(t, "the connect under way", func() bool { return b.Stats().Backends[0].Active == 1 })
	return b, w, c
}

// dialFirst makes the backend connection's descriptor lower than the
// client's, so that a stop, which closes the loop's connections in order
// of descriptors, ends the connect before the client's close can take it
// out of the session.
func dialFirst(t *testing.T) func(w *herd.Worker) {
	return func(w *herd.Worker) {
		hole, err := os.Open(os.DevNull)
		if err != nil {
			t.Fatal(err)
		}
		// Runs after the balancer's, which posted the connect: its socket
		// takes the lowest descriptor free, this one.
		w.OnConnect = func(*herd.Conn) { hole.Close() }
	}
}

// TestStopDuringHealthCheck: a health check whose connect the worker's
// stop ends has no result: the backend is not counted as having failed it.
func TestStopDuringHealthCheck(t *testing.T) {
	t.Parallel()
	b := &Balancer{Backends: []Backend{{Addr: loopback.SilentAddr(t)}},
		Health: HealthCheck{Interval: 50 * time.Millisecond, Timeout: time.Minute}}
	var w *herd.Worker
	runBalancer(t, b, func(rw *herd.Worker) { w = rw; w.Count = 1 })
	time.Sleep(200 * time.Millisecond) // the first check's connect hangs
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := w.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if n := b.Stats().Backends[0].ChecksFailed; n != 0 {
		t.Fatalf("%d checks counted failed: the stop ended them, not the backend", n)
	}
}
