// Command herdbench runs the reuseport on/off study: every load case of
// bench/internal/harness against herd in its three listen modes at 1, 2 and
// 4 loops, gnet v2 with and without SO_REUSEPORT, a minimal epoll server in
// C as the floor (cfloor, Linux with cgo) and the standard library;
// then it prints a markdown table of medians over the repeats and writes an
// SVG chart. The load generator is this binary, re-executed.
//
//	go run ./cmd/herdbench -repeat 3 -md results.md -svg chart.svg
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/seed358e4494/herd/bench/internal/harness"
)

func main() {
	if harness.IsClient() {
		os.Exit(harness.ClientMain())
	}
	var (
		casesRe   = flag.String("cases", ".", "regexp of the cases to run")
		serversRe = flag.String("servers", ".", "regexp of the servers to run (herd-reuseport-2, gnet-noreuse-4, cfloor-reuseport-2, stdnet, nethttp, ...)")
		dur       = flag.Duration("dur", time.Second, "measured window of each run")
		warmup    = flag.Duration("warmup", 200*time.Millisecond, "unmeasured load before each window")
		repeat    = flag.Int("repeat", 3, "independent runs (server and connections anew) per case and server; the table shows medians")
		idle      = flag.Int("idle", 8000, "connections of the idle-memory study; 0 skips it")
		mdPath    = flag.String("md", "", "also write the markdown to this file")
		svgPath   = flag.String("svg", "herdbench.svg", "write the chart here; empty: no chart")
		jsonPath  = flag.String("json", "", "write every run's figures here as JSON")
		syscalls  = flag.Bool("syscalls", false, "count the server's system calls per op with perf (Linux; root or perf_event_paranoid <= 1)")
	)
	flag.Parse()
	if *syscalls {
		os.Setenv(harness.SyscallsEnv, "1")
	}
	cre, err := regexp.Compile(*casesRe)
	if err != nil {
		fatal(err)
	}
	sre, err := regexp.Compile(*serversRe)
	if err != nil {
		fatal(err)
	}
	exe, err := os.Executable()
	if err != nil {
		fatal(err)
	}

	all := map[key][]harness.Result{}
	var order []key
	for r := 0; r < *repeat; r++ {
		for _, c := range harness.Cases {
			if !cre.MatchString(c.Name) {
				continue
			}
			for _, s := range harness.Specs(c) {
				if !sre.MatchString(s.Name()) {
					continue
				}
				k := key{c.Name, s.Name()}
				res, err := runOnce(exe, c, s, *warmup, *dur)
				if err != nil {
					fmt.Fprintf(os.Stderr, "%s %s: %v\n", c.Name, s.Name(), err)
					continue
				}
				if _, ok := all[k]; !ok {
					order = append(order, k)
				}
				all[k] = append(all[k], res)
				fmt.Fprintf(os.Stderr, "run %d/%d %-22s %-18s %10.0f ops/s %7.2f srv-µs/op jain %.3f\n",
					r+1, *repeat, c.Name, s.Name(), res.OpsPerSec(), res.CPUPerOp(), res.Jain)
			}
		}
	}
	idles := map[string][]harness.IdleResult{}
	var idleOrder []string
	if *idle > 0 && cre.MatchString("idle") {
		for r := 0; r < *repeat; r++ {
			for _, s := range harness.IdleSpecs() {
				if !sre.MatchString(s.Name()) {
					continue
				}
				ir, err := harness.MeasureIdle(exe, nil, s, harness.Echo, *idle)
				if err != nil {
					fmt.Fprintf(os.Stderr, "idle %s: %v\n", s.Name(), err)
					continue
				}
				if _, ok := idles[s.Name()]; !ok {
					idleOrder = append(idleOrder, s.Name())
				}
				idles[s.Name()] = append(idles[s.Name()], ir)
				fmt.Fprintf(os.Stderr, "idle %d/%d %-18s %7.0f rss-B/conn %7.0f heap-B/conn\n", r+1, *repeat, s.Name(), ir.RSSPerConn, ir.HeapPerConn)
			}
		}
	}

	sums := summarize(order, all)
	var out io.Writer = os.Stdout
	var mdFile *os.File
	if *mdPath != "" {
		if mdFile, err = os.Create(*mdPath); err != nil {
			fatal(err)
		}
		out = io.MultiWriter(os.Stdout, mdFile)
	}
	writeMarkdown(out, sums, idleOrder, idles, *repeat, *dur)
	if mdFile != nil {
		mdFile.Close()
	}
	if *svgPath != "" {
		if err := os.WriteFile(*svgPath, []byte(chart(sums)), 0o644); err != nil {
			fatal(err)
		}
		fmt.Fprintln(os.Stderr, "chart written to", *svgPath)
	}
	if *jsonPath != "" {
		// JSON has no NaN: a fairness index without loops is left out.
		type result struct {
			harness.Result
			Jain, AcceptJain *float64 `json:",omitempty"`
		}
		type run struct {
			Case, Server string
			Runs         []result
		}
		orNil := func(x float64) *float64 {
			if math.IsNaN(x) {
				return nil
			}
			return &x
		}
		var runs []run
		for _, k := range order {
			rn := run{Case: k.c, Server: k.s}
			for _, r := range all[k] {
				rn.Runs = append(rn.Runs, result{r, orNil(r.Jain), orNil(r.AcceptJain)})
			}
			runs = append(runs, rn)
		}
		b, err := json.MarshalIndent(map[string]any{"runs": runs, "idle": idles}, "", " ")
		if err != nil {
			fatal(err)
		}
		if err := os.WriteFile(*jsonPath, b, 0o644); err != nil {
			fatal(err)
		}
	}
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "herdbench:", err)
	os.Exit(1)
}

type key struct{ c, s string }

func runOnce(exe string, c harness.Case, s harness.Spec, warmup, dur time.Duration) (harness.Result, error) {
	ss, err := harness.Open(exe, nil, c, s)
	if err != nil {
		return harness.Result{}, err
	}
	defer ss.Close()
	if warmup > 0 {
		if _, err := ss.Measure(0, warmup, nil, nil); err != nil {
			return harness.Result{}, err
		}
	}
	return ss.Measure(0, dur, nil, nil)
}

// summary is the medians of one case × server over the repeats.
type summary struct {
	Case, Server                  string
	N                             int
	OpsPerSec, CPU, P50, P99, CSW float64
	Syscalls                      float64 // per op; NaN unless counted (-syscalls)
	Allocs, Jain, LoopsUsed       float64
	ConnJain                      float64   // Jain over connections per loop
	Shares                        []float64 // per-loop share of work (accepts for http-close), of the run with the median Jain
	Accepts                       bool
}

func median(xs []float64) float64 {
	var v []float64
	for _, x := range xs {
		if !math.IsNaN(x) {
			v = append(v, x)
		}
	}
	if len(v) == 0 {
		return math.NaN()
	}
	sort.Float64s(v)
	if len(v)%2 == 1 {
		return v[len(v)/2]
	}
	return (v[len(v)/2-1] + v[len(v)/2]) / 2
}

func summarize(order []key, all map[key][]harness.Result) []summary {
	var out []summary
	for _, k := range order {
		rs := all[k]
		col := func(f func(harness.Result) float64) float64 {
			var xs []float64
			for _, r := range rs {
				xs = append(xs, f(r))
			}
			return median(xs)
		}
		c, _ := harness.CaseByName(k.c)
		s := summary{Case: k.c, Server: k.s, N: len(rs), Accepts: c.Kind == harness.KindHTTPClose}
		s.OpsPerSec = col(harness.Result.OpsPerSec)
		s.CPU = col(harness.Result.CPUPerOp)
		s.P50 = col(func(r harness.Result) float64 { return float64(r.P50) / 1e3 })
		s.P99 = col(func(r harness.Result) float64 { return float64(r.P99) / 1e3 })
		s.CSW = col(func(r harness.Result) float64 {
			if s.Accepts {
				return float64(r.VolCSW) / float64(max(r.Accepted, 1))
			}
			return r.CSWPerOp()
		})
		s.Allocs = col(harness.Result.AllocsPerOp)
		s.Syscalls = col(func(r harness.Result) float64 {
			if r.Syscalls == 0 {
				return math.NaN()
			}
			return float64(r.Syscalls) / float64(max(r.Ops, 1))
		})
		s.Jain = col(func(r harness.Result) float64 { return r.Jain })
		s.ConnJain = col(func(r harness.Result) float64 { return r.AcceptJain })
		s.LoopsUsed = col(func(r harness.Result) float64 {
			if r.PerLoop == nil {
				return math.NaN()
			}
			return float64(r.LoopsUsed)
		})
		// The per-loop distribution of the run whose Jain is the median.
		sorted := append([]harness.Result(nil), rs...)
		sort.Slice(sorted, func(i, j int) bool { return sorted[i].Jain < sorted[j].Jain })
		if mid := sorted[len(sorted)/2]; mid.PerLoop != nil {
			var tot float64
			for _, l := range mid.PerLoop {
				tot += float64(pick(l, s.Accepts))
			}
			for _, l := range mid.PerLoop {
				s.Shares = append(s.Shares, float64(pick(l, s.Accepts))/math.Max(tot, 1))
			}
		}
		out = append(out, s)
	}
	return out
}

func pick(l harness.LoopCount, accepts bool) uint64 {
	if accepts {
		return l.Accepted
	}
	return l.Work
}

func find(sums []summary, c, s string) (summary, bool) {
	for _, x := range sums {
		if x.Case == c && x.Server == s {
			return x, true
		}
	}
	return summary{}, false
}

func f(v float64, prec int) string {
	if math.IsNaN(v) {
		return "–"
	}
	return fmt.Sprintf("%.*f", prec, v)
}

func writeMarkdown(w io.Writer, sums []summary, idleOrder []string, idles map[string][]harness.IdleResult, repeat int, dur time.Duration) {
	fmt.Fprintf(w, "Medians of %d run(s) of %v per case and server. srv µs/op is the server process's CPU time (getrusage, user+sys) per message or request; ×gnet divides it by gnet's with reuseport at the same loop count, ×floor by the C floor's (cfloor-reuseport) at the same loop count. jain and loops are over per-loop work (reads; accepted connections for http-close); conn jain is Jain over the connections each loop accepted. wakeups: voluntary context switches of the server process per op (per connection for http-close). syscalls: the server's system calls per op, counted by perf (with -syscalls).\n\n", repeat, dur)
	cur := ""
	for _, s := range sums {
		if s.Case != cur {
			cur = s.Case
			fmt.Fprintf(w, "\n#### %s\n\n", cur)
			fmt.Fprintln(w, "| server | ops/s | srv µs/op | ×gnet | ×floor | syscalls/op | p50 µs | p99 µs | jain | conn jain | loops | wakeups | allocs/op |")
			fmt.Fprintln(w, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
		}
		ratio, floor := math.NaN(), math.NaN()
		if cnt := countOf(s.Server); cnt != "" {
			if g, ok := find(sums, s.Case, "gnet-reuseport-"+cnt); ok {
				ratio = s.CPU / g.CPU
			}
			if g, ok := find(sums, s.Case, "cfloor-reuseport-"+cnt); ok {
				floor = s.CPU / g.CPU
			}
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", s.Server, f(s.OpsPerSec, 0), f(s.CPU, 2), f(ratio, 2), f(floor, 2),
			f(s.Syscalls, 2), f(s.P50, 0), f(s.P99, 0), f(s.Jain, 3), f(s.ConnJain, 3), f(s.LoopsUsed, 0), f(s.CSW, 2), f(s.Allocs, 2))
	}
	if len(idleOrder) > 0 {
		fmt.Fprintf(w, "\n#### idle connections\n\n| server | conns | RSS B/conn | Go heap B/conn |\n|---|---:|---:|---:|\n")
		for _, n := range idleOrder {
			var rss, heap []float64
			conns := 0
			for _, r := range idles[n] {
				rss = append(rss, r.RSSPerConn)
				heap = append(heap, r.HeapPerConn)
				conns = r.Conns
			}
			fmt.Fprintf(w, "| %s | %d | %s | %s |\n", n, conns, f(median(rss), 0), f(median(heap), 0))
		}
	}
	writeTargets(w, sums, idles)
}

// countOf is the loop count in a server name, "" for the std peers.
func countOf(server string) string {
	i := strings.LastIndexByte(server, '-')
	if i < 0 {
		return ""
	}
	return server[i+1:]
}

func writeTargets(w io.Writer, sums []summary, idles map[string][]harness.IdleResult) {
	fmt.Fprintf(w, "\n#### targets (measured, not asserted)\n\n| target | measured | met |\n|---|---|---|\n")
	row := func(name, measured string, ok bool) {
		m := "no"
		if ok {
			m = "yes"
		}
		fmt.Fprintf(w, "| %s | %s | %s |\n", name, measured, m)
	}
	ratio := func(c, a, b string) (float64, bool) {
		x, ok1 := find(sums, c, a)
		y, ok2 := find(sums, c, b)
		if !ok1 || !ok2 {
			return math.NaN(), false
		}
		return x.CPU / y.CPU, true
	}
	for _, t := range []struct {
		name, c, peer string
		limit         float64
	}{
		{"echo 64 B, 500 conns, 2 loops: CPU/msg ≤ 0.85× gnet", "echo-64B-c500", "gnet-reuseport-2", 0.85},
		{"echo 64 B, 50 conns, 2 loops: CPU/msg ≤ 1× gnet", "echo-64B-c50", "gnet-reuseport-2", 1},
		{"HTTP keep-alive, 2 loops: CPU/req ≤ 0.80× gnet", "http-keepalive-c50", "gnet-reuseport-2", 0.80},
		{"HTTP keep-alive, 2 loops: CPU/req ≤ 0.5× net/http", "http-keepalive-c50", "nethttp", 0.5},
		{"HTTP Connection: close, 2 loops: CPU/req ≤ 1× gnet", "http-close-c50", "gnet-reuseport-2", 1},
	} {
		for _, m := range []string{"reuseport", "shared", "leastconns"} {
			if r, ok := ratio(t.c, "herd-"+m+"-2", t.peer); ok {
				row(t.name+" (herd "+m+")", fmt.Sprintf("%.2f×", r), r <= t.limit)
			}
		}
	}
	if s, ok := find(sums, "longlived-4conns", "herd-leastconns-4"); ok {
		row("4 long-lived conns, Count=4, least-conns: one per loop, Jain (connections per loop) ≥ 0.99", fmt.Sprintf("loops %s, Jain conns %.3f (work %.3f)", f(s.LoopsUsed, 0), s.ConnJain, s.Jain), s.LoopsUsed == 4 && s.ConnJain >= 0.99)
	}
	for _, cnt := range []string{"2", "4"} {
		if s, ok := find(sums, "http-close-c50", "herd-reuseport-"+cnt); ok {
			row("short conns, reuseport, "+cnt+" loops: accept Jain ≥ 0.98", fmt.Sprintf("%.3f", s.Jain), s.Jain >= 0.98)
		}
	}
	maxAlloc := 0.0
	for _, s := range sums {
		if strings.HasPrefix(s.Server, "herd-") && s.Case != "http-close-c50" {
			maxAlloc = math.Max(maxAlloc, s.Allocs)
		}
	}
	row("herd: zero allocations per message/request (keep-alive cases; median, whole server process)", fmt.Sprintf("max %.3f allocs/op", maxAlloc), maxAlloc < 0.01)
	for _, m := range []string{"reuseport", "shared", "leastconns"} {
		if rs, ok := idles["herd-"+m+"-2"]; ok {
			var xs []float64
			for _, r := range rs {
				xs = append(xs, r.RSSPerConn)
			}
			v := median(xs)
			row(fmt.Sprintf("idle conns (%d): ≤ 400 B RSS each (herd %s)", rs[0].Conns, m), fmt.Sprintf("%.0f B", v), v <= 400)
		}
	}
}
