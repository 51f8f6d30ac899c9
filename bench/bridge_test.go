package bench

import (
	"context"
	"io"
	"log/slog"
	"net"
	nethttp "net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/seed358e4494/herd"
	herdhttp "github.com/seed358e4494/herd/protocol/http"
)

// The bridge with handlers that wait on I/O: each request sleeps as a
// database call would, and many clients wait at once. herd's Bridge with
// its default pool against net/http, which runs a goroutine per
// connection. The handler sleeps, so the figure that matters is req/s
// against the ideal clients/delay; both servers run in this process.

// slowHandler answers after delay, as a handler waiting on a database.
func slowHandler(delay time.Duration) nethttp.Handler {
	return nethttp.HandlerFunc(func(w nethttp.ResponseWriter, r *nethttp.Request) {
		time.Sleep(delay)
		io.WriteString(w, "done")
	})
}

// startBridge serves h through herd's Bridge on 2 loops; startNetHTTP with
// net/http. Each returns the address and a stop function.
func startBridge(tb testing.TB, h nethttp.Handler) (string, func()) { return startBridgeN(tb, h, 0) }

// startBridge8 is the bridge with the pool it had by default before (8
// workers on 2 CPUs), for comparison.
func startBridge8(tb testing.TB, h nethttp.Handler) (string, func()) { return startBridgeN(tb, h, 8) }

func startBridgeN(tb testing.TB, h nethttp.Handler, workers int) (string, func()) {
	w := &herd.Worker{Addr: "tcp://127.0.0.1:0", Count: 2, Logger: quietLog()}
	s := &herdhttp.Server{Handler: herdhttp.Bridge(h, workers), Logger: quietLog()}
	if err := s.Attach(w); err != nil {
		tb.Fatal(err)
	}
	if err := w.Listen(); err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { w.Run(ctx); close(done) }()
	return w.ListenAddr().String(), func() { cancel(); <-done }
}

func startNetHTTP(tb testing.TB, h nethttp.Handler) (string, func()) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	srv := &nethttp.Server{Handler: h}
	go srv.Serve(ln)
	return ln.Addr().String(), func() { srv.Close() }
}

// slowLoad sends total requests from clients keep-alive connections and
// returns how many got 200, how many another status, and how long it took.
func slowLoad(addr string, clients, total int) (ok, other int64, elapsed time.Duration, err error) {
	tr := &nethttp.Transport{MaxIdleConnsPerHost: clients, MaxConnsPerHost: clients, DisableCompression: true}
	defer tr.CloseIdleConnections()
	cl := &nethttp.Client{Transport: tr, Timeout: 30 * time.Second}
	var next atomic.Int64
	var nok, nother atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	start := time.Now()
	for i := 0; i < clients; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(total) {
				resp, err := cl.Get("http://" + addr + "/")
				if err != nil {
					firstErr.CompareAndSwap(nil, err)
					return
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode == 200 {
					nok.Add(1)
				} else {
					nother.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	if e := firstErr.Load(); e != nil {
		err = e.(error)
	}
	return nok.Load(), nother.Load(), time.Since(start), err
}

// BenchmarkBridgeSlowHandler: 500 clients, a 100 ms handler. One op is one
// request; req/s is the figure (ideal: 5,000), non-200/op the share of
// requests refused (503 from a full bridge queue).
func BenchmarkBridgeSlowHandler(b *testing.B) {
	const clients, delay = 500, 100 * time.Millisecond
	for _, s := range []struct {
		name  string
		start func(testing.TB, nethttp.Handler) (string, func())
	}{{"herd-bridge", startBridge}, {"herd-bridge-8workers", startBridge8}, {"nethttp", startNetHTTP}} {
		b.Run(s.name, func(b *testing.B) {
			addr, stop := s.start(b, slowHandler(delay))
			defer stop()
			b.ResetTimer()
			ok, other, elapsed, err := slowLoad(addr, clients, max(b.N, clients))
			b.StopTimer()
			if err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(float64(ok)/elapsed.Seconds(), "req/s")
			b.ReportMetric(float64(other)/float64(ok+other), "non-200/op")
		})
	}
}

// TestBridgeSlowHandler runs the comparison briefly (for CI): with 200
// clients and a 50 ms handler, herd's Bridge answers every request with
// 200, as net/http does.
func TestBridgeSlowHandler(t *testing.T) {
	for _, s := range []struct {
		name  string
		start func(testing.TB, nethttp.Handler) (string, func())
	}{{"herd-bridge", startBridge}, {"nethttp", startNetHTTP}} {
		addr, stop := s.start(t, slowHandler(50*time.Millisecond))
		ok, other, elapsed, err := slowLoad(addr, 200, 800)
		stop()
		if err != nil || ok != 800 || other != 0 {
			t.Errorf("%s: %d ok, %d other, %v", s.name, ok, other, err)
		}
		t.Logf("%s: 800 requests in %v (%.0f req/s)", s.name, elapsed, float64(ok)/elapsed.Seconds())
	}
}

func quietLog() *slog.Logger { return slog.New(slog.DiscardHandler) }
