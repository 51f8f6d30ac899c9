// Package bench is herd's reuseport on/off study as go test benchmarks:
// herd in its three listen modes at 1, 2 and 4 loops against gnet v2 (with
// and without SO_REUSEPORT), a minimal epoll server in C as the floor
// (internal/cfloor, Linux with cgo) and the standard library, on loopback,
// with the load generator in a child process (this test binary,
// re-executed) so that the server's own CPU time per message can be read
// with getrusage.
//
//	go test -run '^$' -bench . -benchmem
//
// See README.md for the metrics and the measured figures.
package bench

import (
	"math"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/seed358e4494/herd/bench/internal/cfloor"
	"github.com/seed358e4494/herd/bench/internal/harness"
)

func TestMain(m *testing.M) {
	if harness.IsClient() {
		os.Exit(harness.ClientMain())
	}
	if kind := os.Getenv(envTLSServer); kind != "" {
		os.Exit(tlsServerMain(kind))
	}
	if kind := os.Getenv(envBalancerBackend); kind != "" {
		os.Exit(balancerBackendMain(kind))
	}
	if kind := os.Getenv(envUDPServer); kind != "" {
		os.Exit(udpServerMain(kind))
	}
	os.Exit(m.Run())
}

// clientArgs keep a re-executed test binary from running tests if the
// environment variable were lost.
var clientArgs = []string{"-test.run=^$", "-test.bench=^$"}

// benchCase runs every server of the case's matrix as a sub-benchmark. One
// op is one message (echo) or request (HTTP); the server and the load
// generator's connections are set up once per sub-benchmark and reused as
// b.N grows.
func benchCase(b *testing.B, c harness.Case) {
	for _, spec := range harness.Specs(c) {
		var ss *harness.Session
		b.Run(spec.Name(), func(b *testing.B) {
			if ss == nil {
				var err error
				ss, err = harness.Open(os.Args[0], clientArgs, c, spec)
				if err != nil {
					b.Fatal(err)
				}
			}
			b.ReportAllocs()
			r, err := ss.Measure(int64(b.N), 0, b.ResetTimer, b.StopTimer)
			if err != nil {
				b.Fatal(err)
			}
			report(b, c, r)
		})
		if ss != nil {
			ss.Close()
		}
	}
}

func report(b *testing.B, c harness.Case, r harness.Result) {
	unit := "msg/s"
	if c.Proto == harness.HTTP {
		unit = "req/s"
	}
	b.ReportMetric(r.OpsPerSec(), unit)
	b.ReportMetric(r.CPUPerOp(), "srv-µs/op")
	b.ReportMetric(float64(r.P50)/1e3, "p50-µs")
	b.ReportMetric(float64(r.P99)/1e3, "p99-µs")
	if !math.IsNaN(r.Jain) {
		b.ReportMetric(r.Jain, "jain")
		b.ReportMetric(r.AcceptJain, "conn-jain")
		b.ReportMetric(float64(r.LoopsUsed), "loops-used")
	}
	if r.Syscalls > 0 {
		b.ReportMetric(float64(r.Syscalls)/float64(max(r.Ops, 1)), "syscalls/op")
	}
	if c.Kind == harness.KindHTTPClose {
		b.ReportMetric(float64(r.VolCSW)/float64(max(r.Accepted, 1)), "wakeups/conn")
	} else {
		b.ReportMetric(r.CSWPerOp(), "wakeups/op")
	}
}

func benchCases(b *testing.B, names ...string) {
	for _, n := range names {
		c, ok := harness.CaseByName(n)
		if !ok {
			b.Fatalf("no case %q", n)
		}
		b.Run(n, func(b *testing.B) { benchCase(b, c) })
	}
}

// BenchmarkEcho: ping-pong of 64 B and 4 KiB messages on 50 and 500
// connections.
func BenchmarkEcho(b *testing.B) {
	benchCases(b, "echo-64B-c50", "echo-64B-c500", "echo-4KiB-c50", "echo-4KiB-c500")
}

// BenchmarkHTTP: hello world over keep-alive connections, pipelined 16
// deep, and one request per connection (Connection: close).
func BenchmarkHTTP(b *testing.B) {
	benchCases(b, "http-keepalive-c50", "http-pipelined16-c50", "http-close-c50")
}

// BenchmarkLongLived: 4 long-lived echo connections on 4 loops, where the
// reuseport hash is blind to load. loops-used and jain tell the spread.
func BenchmarkLongLived(b *testing.B) {
	benchCases(b, "longlived-4conns")
}

// BenchmarkIdleConns: server RSS per idle connection with
// HERDBENCH_IDLE_CONNS (default 8000) connections held by the child
// process. b.N is ignored: each run measures once; use -benchtime 1x.
func BenchmarkIdleConns(b *testing.B) {
	n := harness.EnvInt("HERDBENCH_IDLE_CONNS", 8000)
	for _, spec := range harness.IdleSpecs() {
		b.Run(spec.Name(), func(b *testing.B) {
			r, err := harness.MeasureIdle(os.Args[0], clientArgs, spec, harness.Echo, n)
			if err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(r.RSSPerConn, "rss-B/conn")
			b.ReportMetric(r.HeapPerConn, "heap-B/conn")
			b.ReportMetric(float64(r.Conns), "conns")
		})
	}
}

// TestRunners runs every server of the matrix briefly against the load
// generator in each pattern: proof that the runners and the client work,
// fast enough for CI.
func TestRunners(t *testing.T) {
	// The idle study's servers (herd in each mode, gnet both ways, std net,
	// the C floor where built), and net/http for the HTTP cases.
	specs := append(harness.IdleSpecs(), harness.Spec{Impl: "nethttp"})
	idle := []harness.Spec{{Impl: "herd", Mode: "reuseport", Count: 2}}
	if cfloor.Available {
		idle = append(idle, harness.Spec{Impl: "cfloor", Mode: "reuseport", Count: 2})
	}
	cases := []harness.Case{
		{Name: "echo", Proto: harness.Echo, Kind: harness.KindEcho, Conns: 8, Size: 4096},
		{Name: "http", Proto: harness.HTTP, Kind: harness.KindHTTP, Conns: 4, Depth: 1},
		{Name: "pipelined", Proto: harness.HTTP, Kind: harness.KindHTTP, Conns: 4, Depth: 16},
		{Name: "close", Proto: harness.HTTP, Kind: harness.KindHTTPClose, Conns: 4},
	}
	for _, c := range cases {
		for _, spec := range specs {
			if (spec.Impl == "stdnet" && c.Proto != harness.Echo) || (spec.Impl == "nethttp" && c.Proto != harness.HTTP) {
				continue
			}
			t.Run(c.Name+"/"+spec.Name(), func(t *testing.T) {
				ss, err := harness.Open(os.Args[0], clientArgs, c, spec)
				if err != nil {
					t.Fatal(err)
				}
				defer ss.Close()
				const ops = 200
				r, err := ss.Measure(ops, 0, nil, nil)
				if err != nil {
					t.Fatal(err)
				}
				if r.Ops != ops {
					t.Fatalf("%d ops, want %d", r.Ops, ops)
				}
				if r.ServerCPU <= 0 || r.P50 <= 0 {
					t.Errorf("no measurement: %+v", r)
				}
				if spec.Count > 0 {
					var work uint64
					for _, l := range r.PerLoop {
						work += l.Work
					}
					if work == 0 || len(r.PerLoop) != spec.Count {
						t.Errorf("per-loop counters %+v", r.PerLoop)
					}
				}
				// A timed run too, as herdbench does.
				if r, err = ss.Measure(0, 50*time.Millisecond, nil, nil); err != nil || r.Ops == 0 {
					t.Fatalf("timed run: %d ops, %v", r.Ops, err)
				}
			})
		}
	}
	for _, spec := range idle {
		t.Run("idle/"+spec.Name(), func(t *testing.T) {
			r, err := harness.MeasureIdle(os.Args[0], clientArgs, spec, harness.Echo, 200)
			if err != nil {
				t.Fatal(err)
			}
			if r.Conns != 200 || r.RSSLoad == 0 {
				t.Errorf("idle: %+v", r)
			}
		})
	}
}

// openMany opens n connections with open, 64 at a time, and returns those
// that opened; failed counts the others and firstErr is the first error.
// The caller closes what it gets.
func openMany(n int, open func() (net.Conn, error)) (conns []net.Conn, failed int, firstErr error) {
	var mu sync.Mutex
	var wg sync.WaitGroup
	sem := make(chan struct{}, 64)
	for range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			c, err := open()
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				if failed++; firstErr == nil {
					firstErr = err
				}
				return
			}
			conns = append(conns, c)
		}()
	}
	wg.Wait()
	return conns, failed, firstErr
}
