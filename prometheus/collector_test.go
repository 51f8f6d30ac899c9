package prometheus

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"github.com/seed358e4494/herd"
	"github.com/seed358e4494/herd/internal/herdtest"
)

// echoWorker runs a one-loop text echo worker named name until the test
// ends and returns it with its address.
func echoWorker(t *testing.T, name string) (*herd.Worker, string) {
	w := &herd.Worker{Name: name, Addr: "text://127.0.0.1:0", Count: 1, Logger: slog.New(slog.DiscardHandler),
		OnMessage: func(c *herd.Conn, msg []byte) { c.Send(msg) }}
	return w, herdtest.Run(t, w)
}

// script opens conns connections, sends lines lines of "ping" on each,
// reads the echoes, and closes them.
func script(addr string, conns, lines int) error {
	for i := 0; i < conns; i++ {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			return err
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		br := bufio.NewReader(c)
		for j := 0; j < lines; j++ {
			fmt.Fprint(c, "ping\n")
			if l, err := br.ReadString('\n'); err != nil || l != "ping\n" {
				c.Close()
				return fmt.Errorf("echo %q, %v", l, err)
			}
		}
		c.Close()
	}
	return nil
}

func TestCollectorLint(t *testing.T) {
	w, addr := echoWorker(t, "echo")
	if err := script(addr, 1, 1); err != nil {
		t.Fatal(err)
	}
	problems, err := testutil.CollectAndLint(NewCollector(w))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}
}

// After a scripted echo run the counters say exactly what happened: 3
// connections, 12 messages of 5 bytes each way, nothing dropped.
func TestCollectorGolden(t *testing.T) {
	w, addr := echoWorker(t, "echo")
	if err := script(addr, 3, 4); err != nil {
		t.Fatal(err)
	}
	// The server closes each connection after the client's end.
	deadline := time.Now().Add(10 * time.Second)
	for w.Stats().Loops[0].Closed < 3 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	const want = `
# HELP herd_loop_connections_accepted_total Connections the loop took on.
# TYPE herd_loop_connections_accepted_total counter
herd_loop_connections_accepted_total{loop="0",worker="echo"} 3
# HELP herd_loop_connections_active Connections open on the loop.
# TYPE herd_loop_connections_active gauge
herd_loop_connections_active{loop="0",worker="echo"} 0
# HELP herd_loop_connections_closed_total Connections the loop closed.
# TYPE herd_loop_connections_closed_total counter
herd_loop_connections_closed_total{loop="0",worker="echo"} 3
# HELP herd_loop_dropped_messages_total Messages not sent, by reason: full (send queue full), closed (connection closing).
# TYPE herd_loop_dropped_messages_total counter
herd_loop_dropped_messages_total{loop="0",reason="closed",worker="echo"} 0
herd_loop_dropped_messages_total{loop="0",reason="full",worker="echo"} 0
# HELP herd_loop_messages_received_total Messages given to OnMessage (reads, without a protocol).
# TYPE herd_loop_messages_received_total counter
herd_loop_messages_received_total{loop="0",worker="echo"} 12
# HELP herd_loop_received_bytes_total Bytes read.
# TYPE herd_loop_received_bytes_total counter
herd_loop_received_bytes_total{loop="0",worker="echo"} 60
# HELP herd_loop_send_queue_bytes Bytes waiting in the loop's send queues.
# TYPE herd_loop_send_queue_bytes gauge
herd_loop_send_queue_bytes{loop="0",worker="echo"} 0
# HELP herd_loop_sent_bytes_total Bytes written.
# TYPE herd_loop_sent_bytes_total counter
herd_loop_sent_bytes_total{loop="0",worker="echo"} 60
# HELP herd_worker_connections_rejected_total Connections closed at once because MaxConns was reached.
# TYPE herd_worker_connections_rejected_total counter
herd_worker_connections_rejected_total{worker="echo"} 0
`
	names := []string{"herd_loop_connections_accepted_total", "herd_loop_connections_active", "herd_loop_connections_closed_total",
		"herd_loop_dropped_messages_total", "herd_loop_messages_received_total", "herd_loop_received_bytes_total",
		"herd_loop_send_queue_bytes", "herd_loop_sent_bytes_total", "herd_worker_connections_rejected_total"}
	if err := testutil.CollectAndCompare(NewCollector(w), strings.NewReader(want), names...); err != nil {
		t.Fatal(err)
	}
	// Busy time is real time, so only its presence and sign are checked.
	if n := testutil.CollectAndCount(NewCollector(w), "herd_loop_busy_seconds_total"); n != 1 {
		t.Errorf("%d busy series, want 1", n)
	}
}

// Scrapes while the loops serve traffic, from several goroutines (run with
// -race): each sees a consistent set of series, and the counters only grow.
func TestCollectorUnderTraffic(t *testing.T) {
	w1, a1 := echoWorker(t, "one")
	w2, a2 := echoWorker(t, "two")
	reg := prometheus.NewRegistry()
	reg.MustRegister(NewCollector(w1, w2))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	var sent atomic.Int64
	for _, a := range []string{a1, a2} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				if err := script(a, 1, 20); err != nil {
					t.Error(err)
					return
				}
				sent.Add(20)
			}
		}()
	}
	var scrapes atomic.Int64
	for i := 0; i < 3; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			last := 0.0
			for ctx.Err() == nil {
				mfs, err := reg.Gather()
				if err != nil {
					t.Error(err)
					return
				}
				total := 0.0
				for _, mf := range mfs {
					if mf.GetName() == "herd_loop_messages_received_total" {
						if len(mf.GetMetric()) != 2 {
							t.Errorf("%d message series, want 2", len(mf.GetMetric()))
						}
						for _, m := range mf.GetMetric() {
							total += m.GetCounter().GetValue()
						}
					}
				}
				if total < last {
					t.Errorf("messages went down: %v after %v", total, last)
				}
				last = total
				scrapes.Add(1)
			}
		}()
	}
	wg.Wait()
	if scrapes.Load() == 0 || sent.Load() == 0 {
		t.Fatalf("%d scrapes, %d messages", scrapes.Load(), sent.Load())
	}
	t.Logf("%d scrapes while %d messages were echoed", scrapes.Load(), sent.Load())
}

// Scale changes the set of loops, and the worker's loop figures say what
// happened: 1 → 3 → 2 leaves loops 0 and 1, two added, one removed; loop
// 2's series stay, at what it left.
func TestCollectorScale(t *testing.T) {
	w, addr := echoWorker(t, "echo")
	herdtest.WaitFor(t, "the worker running", func() bool { return w.Loops() != nil })
	for _, n := range []int{3, 2} {
		if err := w.Scale(context.Background(), n); err != nil {
			t.Fatal(err)
		}
	}
	if err := script(addr, 2, 1); err != nil {
		t.Fatal(err)
	}
	const want = `
# HELP herd_worker_loops Event loops serving now.
# TYPE herd_worker_loops gauge
herd_worker_loops{worker="echo"} 2
# HELP herd_worker_loops_added_total Loops Scale started.
# TYPE herd_worker_loops_added_total counter
herd_worker_loops_added_total{worker="echo"} 2
# HELP herd_worker_loops_removed_total Loops Scale took away.
# TYPE herd_worker_loops_removed_total counter
herd_worker_loops_removed_total{worker="echo"} 1
`
	if err := testutil.CollectAndCompare(NewCollector(w), strings.NewReader(want), "herd_worker_loops", "herd_worker_loops_added_total", "herd_worker_loops_removed_total"); err != nil {
		t.Fatal(err)
	}
	if n := testutil.CollectAndCount(NewCollector(w), "herd_loop_busy_seconds_total"); n != 3 {
		t.Errorf("%d busy series after 1 → 3 → 2, want 3 (loop 2's stays)", n)
	}
}

// 20 random Scale steps of a ReusePort worker while clients churn, the
// collector scraped between steps: no _total series ever decreases or
// disappears, and each loop's series add up once the clients are done.
// Before, the series of a loop that left vanished and a loop added again
// under its number started from zero: a counter reset to rate().
func TestCollectorMonotonicAcrossScale(t *testing.T) {
	w := &herd.Worker{Name: "scaled", Addr: "text://127.0.0.1:0", Count: 3, ReusePort: true, Logger: slog.New(slog.DiscardHandler),
		OnMessage: func(c *herd.Conn, msg []byte) { c.Send(msg) }}
	addr := herdtest.Run(t, w)
	herdtest.WaitFor(t, "the worker running", func() bool { return w.Loops() != nil })
	reg := prometheus.NewRegistry()
	reg.MustRegister(NewCollector(w))
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				if err := script(addr, 1, 3); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	scrape := func() map[string]float64 {
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]float64{}
		for _, mf := range mfs {
			if !strings.HasSuffix(mf.GetName(), "_total") {
				continue
			}
			for _, m := range mf.GetMetric() {
				key := mf.GetName()
				for _, lp := range m.GetLabel() {
					key += "," + lp.GetName() + "=" + lp.GetValue()
				}
				got[key] = m.GetCounter().GetValue()
			}
		}
		return got
	}
	prev := scrape()
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 2))
	steps := []int{}
	for step := range 20 {
		n := 1 + rng.IntN(6)
		steps = append(steps, n)
		if err := w.Scale(context.Background(), n); err != nil {
			t.Fatalf("Scale(%d): %v", n, err)
		}
		time.Sleep(20 * time.Millisecond) // traffic on the new loops
		now := scrape()
		for k, v := range prev {
			if nv, ok := now[k]; !ok {
				t.Errorf("step %d (Scale(%d)): series %s is gone (was %v)", step, n, k, v)
			} else if nv < v {
				t.Errorf("step %d (Scale(%d)): %s went down from %v to %v", step, n, k, v, nv)
			}
		}
		prev = now
	}
	cancel()
	wg.Wait()
	t.Logf("steps %v", steps)
	herdtest.WaitFor(t, "the server to close every connection", func() bool { return w.Stats().Total().Active == 0 })
	expected := map[string]float64{}
	s := w.Stats()
	for _, l := range append(s.Loops, s.Departed...) {
		loop := fmt.Sprint(l.Index)
		in := testutil.ToFloat64(loopCounter(w, "herd_loop_connections_accepted_total", loop)) + testutil.ToFloat64(loopCounter(w, "herd_loop_connections_moved_in_total", loop))
		out := testutil.ToFloat64(loopCounter(w, "herd_loop_connections_closed_total", loop)) + testutil.ToFloat64(loopCounter(w, "herd_loop_connections_moved_out_total", loop))
		if in != out {
			t.Errorf("loop %s: accepted + moved in = %v, closed + moved out = %v", loop, in, out)
		}
		expected[loop] = in
	}
	if len(expected) != max(slices.Max(steps), 3) {
		t.Errorf("%d loop rows, want one per number ever used (%d)", len(expected), max(slices.Max(steps), 3))
	}
}

// loopCounter is a collector of one series of the worker's collector: name
// for loop.
func loopCounter(w *herd.Worker, name, loop string) prometheus.Collector {
	return filtered{NewCollector(w), name, loop}
}

type filtered struct {
	c          *Collector
	name, loop string
}

func (f filtered) Describe(ch chan<- *prometheus.Desc) { f.c.Describe(ch) }

func (f filtered) Collect(ch chan<- prometheus.Metric) {
	all := make(chan prometheus.Metric, 1024)
	f.c.Collect(all)
	close(all)
	for m := range all {
		if !strings.Contains(m.Desc().String(), `"`+f.name+`"`) {
			continue
		}
		var pb dto.Metric
		m.Write(&pb)
		for _, lp := range pb.GetLabel() {
			if lp.GetName() == "loop" && lp.GetValue() == f.loop {
				ch <- m
			}
		}
	}
}
