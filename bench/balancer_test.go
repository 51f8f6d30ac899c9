//go:build linux

package bench

// The balancer benchmark: herd's TCP load balancer (examples/balancer,
// -count 2, built here with go build) against HAProxy 2.6 (nbthread 2, mode
// tcp, a config generated on a free loopback port), both with round robin
// in front of the same two backends, plus "direct" (the client straight to
// the first backend, no proxy) as the floor. Every proxy is a child process
// of its own, started afresh for each row, as are the backends (this test
// binary re-executed with HERD_BENCH_BALANCER_BACKEND set) and wrk; so the
// proxy's CPU time (utime+stime from /proc/PID/stat, all threads, 10 ms
// ticks) and resident memory (VmRSS) are its own.
//
// Rows, in this order in every metric:
//
//	haproxy         HAProxy, no splice options
//	herd            examples/balancer
//	haproxy-splice  HAProxy with "option splice-request" and "option
//	                splice-response" (splice(2) forced both ways, not the
//	                splice-auto heuristics)
//	herd-splice     examples/balancer -splice (fails clearly while the
//	                command has no -splice flag)
//	direct          no proxy (not in memory: there is no proxy to measure)
//
// Metrics, one sub-benchmark each (BenchmarkBalancer/<metric>/<row>):
//
//	keepalive  wrk -t2 -c50 -d<T> --latency against an HTTP hello-world
//	           backend (herd's protocol/http, one loop per backend), T = 10s:
//	           req/s; p50-µs and p99-µs are wrk's (closed loop, at
//	           saturation); proxy-cpu-µs/req is the proxy's CPU time over
//	           the run divided by the requests wrk completed.
//	close      the same with -H 'Connection: close': every request on a new
//	           connection (the backend answers Connection: close and wrk
//	           reconnects): conns/s, proxy-cpu-µs/conn.
//	latency    an open-loop client in this process: 50 keep-alive
//	           connections, requests on a fixed schedule of 5,000 req/s
//	           for 5 s (well below saturation), after a warm-up of 1 s at
//	           that rate (200 ms when brief); latency from each request's
//	           scheduled send time to its response (coordinated omission
//	           avoided; the pacing is clock_nanosleep on CLOCK_MONOTONIC,
//	           not Go timers, which round sub-millisecond waits up to a
//	           millisecond): p50-µs, p99-µs, the req/s achieved and
//	           proxy-cpu-µs/req at that rate.
//	bulk       one proxied connection; the client writes 1 GiB to a backend
//	           that reads it, while the backend writes 1 GiB back, at once.
//	           Both streams carry a pattern that the receiver checks (a
//	           proxy that loses, repeats or corrupts a byte fails the row).
//	           up-MiB/s is client to backend (until the backend has the
//	           last byte), down-MiB/s backend to client; proxy-cpu-ms/GiB is
//	           the proxy's CPU per GiB forwarded, both directions counted.
//	           One op is one such transfer: b.N transfers are made.
//	memory     5,000 idle proxied connections (each has echoed one byte
//	           through the proxy, then stays open: 5,000 sockets in this
//	           process, 10,000 in the proxy, 5,000 over the two backends):
//	           proxy-B/conn is the proxy's VmRSS growth divided by the
//	           connections (kernel memory, socket buffers and pipes, is
//	           not in it), proxy-fds/conn its open files' growth (2 is a
//	           socket each side; more is held per idle connection).
//
// The rows with "errors" report wrk's socket errors plus non-2xx answers,
// or the open-loop client's failed requests; any is an error of the run.
// After each herd row the balancer's per-backend table (SIGUSR1) must show
// no connect error, no client closed for want of a backend, and no proxied
// connection left open once the clients have gone.
//
// Apart from bulk, each sub-benchmark measures once whatever b.N is, so run
// it with -benchtime 1x (ns/op is then the length of the run, meaningless).
// For figures, on an otherwise idle machine (about 4 minutes a round;
// -count 3 would repeat each row back to back, while separate runs
// alternate the servers round by round):
//
//	cd bench && for i in 1 2 3; do go test -run '^$' -bench Balancer -benchtime 1x -timeout 30m; done | tee balancer.txt
//
// The brief run (CI; -short, or HERD_BENCH_BRIEF=1) takes 1 s per wrk row
// and per latency row, 32 MiB each way for bulk and 500 idle connections,
// about 25 s plus the build:
//
//	cd bench && go test -run '^$' -bench Balancer -benchtime 1x -short
//
// Each size can be set alone: HERD_BENCH_BALANCER_SECONDS (wrk rows),
// HERD_BENCH_BALANCER_LATENCY_SECONDS, HERD_BENCH_BALANCER_RATE (req/s),
// HERD_BENCH_BALANCER_BULK_MIB, HERD_BENCH_BALANCER_IDLE_CONNS (at most
// 8,000: the proxy holds two sockets per connection under a 20,000 file
// limit). Without wrk or haproxy the benchmark is skipped, or fails where
// CI is set.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/seed358e4494/herd"
	"github.com/seed358e4494/herd/bench/internal/harness"
	herdhttp "github.com/seed358e4494/herd/protocol/http"
)

const envBalancerBackend = "HERD_BENCH_BALANCER_BACKEND"

// balancerRows are the servers of every metric, in order.
var balancerRows = []string{"haproxy", "herd", "haproxy-splice", "herd-splice", "direct"}

// balancerSizes are the run's lengths and sizes.
type balancerSizes struct {
	wrkDur   time.Duration // each keepalive and close row
	wrkConns int
	latDur   time.Duration // each latency row
	latConns int
	rate     int   // open-loop requests per second
	bulk     int64 // bytes each way
	idle     int   // idle connections in memory
	// settle is the pause before each row, so that the sockets a row
	// leaves (tens of thousands in TIME_WAIT after the short-connection
	// rows) do not weigh on the next: without it the first latency row,
	// HAProxy's, came out five times slower in two rounds of three.
	settle time.Duration
}

func balancerSettings() balancerSizes {
	brief := testing.Short() || os.Getenv("HERD_BENCH_BRIEF") != ""
	secs, latSecs, bulkMiB, idle := 10, 5, 1024, 5000
	if brief {
		secs, latSecs, bulkMiB, idle = 1, 1, 32, 500
	}
	s := balancerSizes{wrkConns: 50, latConns: 50, settle: 2 * time.Second}
	if brief {
		s.settle = 0
	}
	s.wrkDur = time.Duration(harness.EnvInt("HERD_BENCH_BALANCER_SECONDS", secs)) * time.Second
	s.latDur = time.Duration(harness.EnvInt("HERD_BENCH_BALANCER_LATENCY_SECONDS", latSecs)) * time.Second
	s.rate = harness.EnvInt("HERD_BENCH_BALANCER_RATE", 5000)
	s.bulk = int64(harness.EnvInt("HERD_BENCH_BALANCER_BULK_MIB", bulkMiB)) << 20
	s.idle = min(harness.EnvInt("HERD_BENCH_BALANCER_IDLE_CONNS", idle), 8000)
	return s
}

// benchTool finds an external program: missing, the benchmark is skipped,
// or fails under CI, which is expected to have installed it (interop's
// convention).
func benchTool(b *testing.B, name string, paths ...string) string {
	b.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	for _, p := range paths {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	if os.Getenv("CI") != "" {
		b.Fatalf("%s is not installed; .ci/run should have installed it", name)
	}
	b.Skipf("%s is not installed", name)
	return ""
}

type balancerBench struct {
	haproxy, wrk, herdBin string
	sz                    balancerSizes
}

func BenchmarkBalancer(b *testing.B) {
	e := &balancerBench{
		haproxy: benchTool(b, "haproxy", "/usr/sbin/haproxy", "/usr/local/sbin/haproxy"),
		wrk:     benchTool(b, "wrk"),
		sz:      balancerSettings(),
	}
	e.herdBin = filepath.Join(b.TempDir(), "balancer")
	build := exec.Command("go", "build", "-o", e.herdBin, "./examples/balancer")
	build.Dir = ".."
	if out, err := build.CombinedOutput(); err != nil {
		b.Fatalf("building examples/balancer: %v\n%s", err, out)
	}
	b.Run("keepalive", func(b *testing.B) {
		e.metric(b, "http", balancerRows, func(b *testing.B, addr string, px *childProc) { e.wrkRow(b, addr, px, false) })
	})
	b.Run("close", func(b *testing.B) {
		e.metric(b, "http", balancerRows, func(b *testing.B, addr string, px *childProc) { e.wrkRow(b, addr, px, true) })
	})
	b.Run("latency", func(b *testing.B) { e.metric(b, "http", balancerRows, e.latencyRow) })
	b.Run("bulk", func(b *testing.B) { e.metric(b, "bulk", balancerRows, e.bulkRow) })
	b.Run("memory", func(b *testing.B) {
		e.metric(b, "hold", balancerRows[:len(balancerRows)-1], e.memoryRow) // no proxy, no row
	})
}

// metric starts two backends of a kind for the metric's rows and runs each
// row against them: through a proxy started for the row, or directly to the
// first backend.
func (e *balancerBench) metric(b *testing.B, kind string, rows []string, measure func(b *testing.B, addr string, px *childProc)) {
	backends := []*childProc{startBalancerBackend(b, kind), startBalancerBackend(b, kind)}
	addrs := []string{backends[0].addr, backends[1].addr}
	for _, row := range rows {
		time.Sleep(e.sz.settle)
		b.Run(row, func(b *testing.B) {
			if row == "direct" {
				measure(b, addrs[0], nil)
				return
			}
			px := e.startProxy(b, row, addrs)
			measure(b, px.addr, px)
			if strings.HasPrefix(row, "herd") && !b.Failed() {
				checkHerdBalancer(b, px)
			}
		})
	}
}

// childProc is a process the benchmark started; b.Cleanup stops it.
type childProc struct {
	name   string
	cmd    *exec.Cmd
	pid    int
	addr   string
	stdin  io.WriteCloser
	out    *lineSink
	errOut *headBuffer
	exited chan struct{}
}

// startChild starts cmd and registers its stop (stdin closed, SIGTERM, and
// SIGKILL after 5 s, by PID) with b.Cleanup, so that it ends whatever
// happens to the benchmark; Pdeathsig kills it should this process die
// first.
func startChild(b *testing.B, name string, cmd *exec.Cmd) *childProc {
	p := &childProc{name: name, cmd: cmd, out: &lineSink{lines: make(chan string, 4096)}, errOut: &headBuffer{max: 32 << 10}, exited: make(chan struct{})}
	cmd.Stdout = p.out
	cmd.Stderr = p.errOut
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	var err error
	if p.stdin, err = cmd.StdinPipe(); err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatalf("starting %s: %v", name, err)
	}
	p.pid = cmd.Process.Pid
	go func() { cmd.Wait(); close(p.exited) }()
	b.Cleanup(func() {
		p.stop()
		if s := unremarkable.ReplaceAllString(p.errOut.String(), ""); strings.TrimSpace(s) != "" {
			b.Logf("%s (pid %d) wrote to stderr:\n%s", name, p.pid, firstLines(s, 12))
		}
	})
	return p
}

// unremarkable is what a child writes to stderr that is not worth showing:
// herd's line when it starts listening.
var unremarkable = regexp.MustCompile(`(?m)^time=\S+ level=INFO msg="herd: listening".*\n`)

func (p *childProc) stop() {
	p.stdin.Close()
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(5 * time.Second):
		p.cmd.Process.Kill()
		<-p.exited
	}
}

// firstLine is the child's first line of output, or an error with what it
// wrote to stderr if it ended or said nothing within 10 s.
func (p *childProc) firstLine() (string, error) {
	select {
	case line := <-p.out.lines:
		return line, nil
	case <-p.exited:
	case <-time.After(10 * time.Second):
		return "", fmt.Errorf("%s printed nothing in 10s; stderr: %s", p.name, firstLines(p.errOut.String(), 5))
	}
	select { // a line written just before the end
	case line := <-p.out.lines:
		return line, nil
	default:
	}
	return "", fmt.Errorf("%s exited (%v) before it was ready; stderr: %s", p.name, p.cmd.ProcessState, firstLines(p.errOut.String(), 5))
}

func firstLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = append(lines[:n], fmt.Sprintf("... (%d more lines)", len(lines)-n))
	}
	return strings.Join(lines, "\n")
}

// lineSink is a child's stdout: its lines, on a channel (dropped when
// nobody reads them), so that the child never blocks on it.
type lineSink struct {
	mu    sync.Mutex
	part  []byte
	lines chan string
}

func (s *lineSink) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.part = append(s.part, p...)
	for {
		i := bytes.IndexByte(s.part, '\n')
		if i < 0 {
			break
		}
		select {
		case s.lines <- string(s.part[:i]):
		default:
		}
		s.part = append(s.part[:0], s.part[i+1:]...)
	}
	return len(p), nil
}

// headBuffer keeps the first max bytes written to it.
type headBuffer struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	max     int
	dropped int
}

func (h *headBuffer) Write(p []byte) (int, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := min(len(p), h.max-h.buf.Len())
	h.buf.Write(p[:n])
	h.dropped += len(p) - n
	return len(p), nil
}

func (h *headBuffer) String() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.dropped > 0 {
		return fmt.Sprintf("%s\n(%d more bytes)", h.buf.String(), h.dropped)
	}
	return h.buf.String()
}

// procRSS is a process's resident memory in bytes (tls_test.go's reading).
func procRSS(pid int) int64 { return (&tlsChild{pid: pid}).rss() }

// procFDs is how many files a process has open.
func procFDs(pid int) int {
	ents, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	return len(ents)
}

// startBalancerBackend starts a backend: this test binary, re-executed.
func startBalancerBackend(b *testing.B, kind string) *childProc {
	cmd := exec.Command(os.Args[0], clientArgs...)
	cmd.Env = append(os.Environ(), envBalancerBackend+"="+kind)
	p := startChild(b, "backend "+kind, cmd)
	line, err := p.firstLine()
	if err != nil {
		b.Fatal(err)
	}
	p.addr, _, _ = strings.Cut(line, " ")
	return p
}

var herdListening = regexp.MustCompile(`listening on (\S+) pid (\d+)`)

// startProxy starts the row's proxy in front of backends and waits until
// it accepts connections.
func (e *balancerBench) startProxy(b *testing.B, row string, backends []string) *childProc {
	splice := strings.HasSuffix(row, "-splice")
	if strings.HasPrefix(row, "haproxy") {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		addr := l.Addr().String()
		l.Close()
		cfg := filepath.Join(b.TempDir(), "haproxy.cfg")
		if err := os.WriteFile(cfg, []byte(haproxyConfig(addr, backends, splice, e.sz.idle+1000)), 0o644); err != nil {
			b.Fatal(err)
		}
		p := startChild(b, row, exec.Command(e.haproxy, "-f", cfg, "-db"))
		p.addr = addr
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
			c, err := net.DialTimeout("tcp", addr, time.Second)
			if err == nil {
				c.Close()
				break
			}
			select {
			case <-p.exited:
				b.Fatalf("%s exited (%v) before it was ready; stderr: %s", row, p.cmd.ProcessState, firstLines(p.errOut.String(), 10))
			default:
			}
			if time.Now().After(deadline) {
				b.Fatalf("%s does not accept on %s: %v", row, addr, err)
			}
		}
		return p
	}
	args := []string{"-listen", "127.0.0.1:0", "-count", "2", "-algorithm", "roundrobin"}
	for _, a := range backends {
		args = append(args, "-backend", a)
	}
	if splice {
		args = append(args, "-splice")
	}
	p := startChild(b, row, exec.Command(e.herdBin, args...))
	line, err := p.firstLine()
	if err != nil {
		if splice && strings.Contains(p.errOut.String(), "flag provided but not defined: -splice") {
			b.Fatalf("%s: examples/balancer has no -splice flag yet (\"flag provided but not defined: -splice\"): this row runs once it has", row)
		}
		b.Fatal(err)
	}
	m := herdListening.FindStringSubmatch(line)
	if m == nil {
		b.Fatalf("%s printed %q", row, line)
	}
	p.addr = m[1]
	return p
}

// haproxyConfig is HAProxy's config: 2 threads, TCP, round robin over the
// backends, no health checks (as herd's balancer here), long timeouts.
// maxpipes is set so that maxconn's file descriptors and the pipes' fit
// under a 20,000 file limit.
func haproxyConfig(addr string, backends []string, splice bool, maxconn int) string {
	var sb strings.Builder
	fmt.Fprintf(&sb, "global\n\tnbthread 2\n\tmaxconn %d\n\tmaxpipes 1000\n", maxconn)
	if splice {
		// The pipe size herd's splicing asks for (F_SETPIPE_SZ); HAProxy's
		// default is the system's, 64 KiB.
		sb.WriteString("\ttune.pipesize 262144\n")
	}
	sb.WriteString("defaults\n\tmode tcp\n\ttimeout connect 5s\n\ttimeout client 5m\n\ttimeout server 5m\n")
	if splice {
		sb.WriteString("\toption splice-request\n\toption splice-response\n")
	}
	fmt.Fprintf(&sb, "frontend fe\n\tbind %s\n\tmaxconn %d\n\tdefault_backend be\n", addr, maxconn)
	sb.WriteString("backend be\n\tbalance roundrobin\n")
	for i, a := range backends {
		fmt.Fprintf(&sb, "\tserver b%d %s\n", i, a)
	}
	return sb.String()
}

// herdTable asks herd's balancer for its per-backend table (SIGUSR1) and
// returns its rows by column name, and the clients closed for want of a
// backend.
func herdTable(px *childProc) (rows []map[string]string, noBackend int, raw string, err error) {
	for drained := false; !drained; { // lines from before
		select {
		case <-px.out.lines:
		default:
			drained = true
		}
	}
	if err := px.cmd.Process.Signal(syscall.SIGUSR1); err != nil {
		return nil, 0, "", err
	}
	var header []string
	var sb strings.Builder
	timeout := time.After(5 * time.Second)
	for {
		select {
		case line := <-px.out.lines:
			sb.WriteString(line + "\n")
			f := strings.Fields(line)
			switch {
			case len(f) > 0 && f[0] == "backend":
				header = f
			case strings.HasPrefix(line, "clients closed with no backend:"):
				// "clients closed with no backend: N; for want of local resources: M"
				var local int
				if _, err = fmt.Sscanf(line, "clients closed with no backend: %d; for want of local resources: %d", &noBackend, &local); err == nil {
					noBackend += local
				}
				return rows, noBackend, sb.String(), err
			case header != nil && len(f) == len(header):
				r := map[string]string{}
				for i, h := range header {
					r[h] = f[i]
				}
				rows = append(rows, r)
			}
		case <-timeout:
			return nil, 0, sb.String(), errors.New("no table on SIGUSR1 within 5s")
		}
	}
}

// checkHerdBalancer fails the row if herd's balancer counted a connect
// error or a client with no backend, or still has proxied connections 5 s
// after the clients closed theirs.
func checkHerdBalancer(b *testing.B, px *childProc) {
	var connErrs, active, total int
	var noBackend int
	var raw string
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		rows, nb, r, err := herdTable(px)
		if err != nil {
			b.Errorf("herd's balancer table: %v\n%s", err, r)
			return
		}
		connErrs, active, total, noBackend, raw = 0, 0, 0, nb, r
		for _, row := range rows {
			n, _ := strconv.Atoi(row["connect-errors"])
			connErrs += n
			n, _ = strconv.Atoi(row["active"])
			active += n
			n, _ = strconv.Atoi(row["total"])
			total += n
		}
		if active == 0 || time.Now().After(deadline) {
			break
		}
	}
	if connErrs > 0 || noBackend > 0 || active > 0 {
		b.Errorf("herd's balancer: %d connect errors, %d clients closed with no backend, %d proxied connections still open 5s after the clients closed (of %d)\n%s",
			connErrs, noBackend, active, total, raw)
	}
}

// wrk

type wrkResult struct {
	requests int64
	rps      float64
	p50, p99 time.Duration
	errors   int64 // socket errors and non-2xx/3xx answers
	out      string
}

var (
	wrkRequests = regexp.MustCompile(`(\d+) requests in `)
	wrkRPS      = regexp.MustCompile(`Requests/sec:\s+([\d.]+)`)
	wrkPct      = regexp.MustCompile(`(?m)^\s+(50|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s|m)\s*$`)
	wrkSocket   = regexp.MustCompile(`Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)`)
	wrkNon2xx   = regexp.MustCompile(`Non-2xx or 3xx responses: (\d+)`)
)

func runWrk(wrk, url string, d time.Duration, conns int, closeEach bool) (wrkResult, error) {
	ctx, cancel := context.WithTimeout(context.Background(), d+30*time.Second)
	defer cancel()
	args := []string{"-t2", fmt.Sprintf("-c%d", conns), fmt.Sprintf("-d%ds", max(1, int(d.Seconds()))), "--latency"}
	if closeEach {
		args = append(args, "-H", "Connection: close")
	}
	cmd := exec.CommandContext(ctx, wrk, append(args, url)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := cmd.CombinedOutput()
	r := wrkResult{out: string(out)}
	if err != nil {
		return r, fmt.Errorf("wrk: %v\n%s", err, out)
	}
	m := wrkRequests.FindStringSubmatch(r.out)
	m2 := wrkRPS.FindStringSubmatch(r.out)
	if m == nil || m2 == nil {
		return r, fmt.Errorf("wrk's output not understood:\n%s", out)
	}
	r.requests, _ = strconv.ParseInt(m[1], 10, 64)
	r.rps, _ = strconv.ParseFloat(m2[1], 64)
	for _, m := range wrkPct.FindAllStringSubmatch(r.out, -1) {
		v, _ := strconv.ParseFloat(m[2], 64)
		unit := map[string]float64{"us": 1e3, "ms": 1e6, "s": 1e9, "m": 60e9}[m[3]]
		if m[1] == "50" {
			r.p50 = time.Duration(v * unit)
		} else {
			r.p99 = time.Duration(v * unit)
		}
	}
	if m := wrkSocket.FindStringSubmatch(r.out); m != nil {
		for _, s := range m[1:] {
			n, _ := strconv.ParseInt(s, 10, 64)
			r.errors += n
		}
	}
	if m := wrkNon2xx.FindStringSubmatch(r.out); m != nil {
		n, _ := strconv.ParseInt(m[1], 10, 64)
		r.errors += n
	}
	return r, nil
}

func µs(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 }

// wrkRow: keepalive (closeEach false) or close.
func (e *balancerBench) wrkRow(b *testing.B, addr string, px *childProc, closeEach bool) {
	var cpu0 time.Duration
	if px != nil {
		cpu0 = procCPU(px.pid)
	}
	b.ResetTimer()
	r, err := runWrk(e.wrk, "http://"+addr+"/", e.sz.wrkDur, e.sz.wrkConns, closeEach)
	b.StopTimer()
	if err != nil {
		b.Fatal(err)
	}
	if r.requests == 0 {
		b.Fatalf("no request completed:\n%s", r.out)
	}
	per, unit := "req", "req/s"
	if closeEach {
		per, unit = "conn", "conns/s"
	}
	b.ReportMetric(r.rps, unit)
	b.ReportMetric(µs(r.p50), "p50-µs")
	b.ReportMetric(µs(r.p99), "p99-µs")
	if px != nil {
		b.ReportMetric(µs(procCPU(px.pid)-cpu0)/float64(r.requests), "proxy-cpu-µs/"+per)
	}
	b.ReportMetric(float64(r.errors), "errors")
	if r.errors > 0 {
		b.Errorf("%d errors (socket errors and non-2xx answers):\n%s", r.errors, r.out)
	}
}

// Open-loop latency

// mono is CLOCK_MONOTONIC in nanoseconds.
func mono() int64 {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return ts.Nano()
}

// sleepUntil sleeps until CLOCK_MONOTONIC reaches at (clock_nanosleep with
// TIMER_ABSTIME: microsecond wake-ups, where Go's timers wait whole
// milliseconds for sub-millisecond sleeps when the process is idle).
func sleepUntil(at int64) {
	ts := unix.NsecToTimespec(at)
	for mono() < at {
		if err := unix.ClockNanosleep(unix.CLOCK_MONOTONIC, unix.TIMER_ABSTIME, &ts, nil); err != nil && err != unix.EINTR {
			return
		}
	}
}

type openLoopResult struct {
	hist    harness.Hist
	done    int
	failed  int
	elapsed time.Duration
	err     error // the first failure
}

// openLoop sends rate requests per second for warm + d over conns
// keep-alive connections, request i at start + i/rate on connection i mod
// conns, and records the latency from its scheduled time of each one
// scheduled after the warm-up, when it calls onMeasure.
func openLoop(addr string, rate, conns int, warm, d time.Duration, onMeasure func()) openLoopResult {
	var res openLoopResult
	type client struct {
		c  net.Conn
		br *bufio.Reader
	}
	cs := make([]client, conns)
	defer func() {
		for _, c := range cs {
			if c.c != nil {
				c.c.Close()
			}
		}
	}()
	for i := range cs {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			res.err = err
			return res
		}
		c.SetDeadline(time.Now().Add(d + 30*time.Second))
		cs[i] = client{c, bufio.NewReader(c)}
		if err := get(c, cs[i].br, "/"); err != nil { // warm-up, and a proof it works
			res.err = fmt.Errorf("warm-up request: %w", err)
			return res
		}
	}
	total := int(float64(rate) * (warm + d).Seconds())
	interval := int64(time.Second) / int64(rate)
	start := mono() + int64(20*time.Millisecond)
	measured := start + int64(warm)
	hists := make([]harness.Hist, conns)
	var done, failed atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	for k := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := cs[k]
			for i := k; i < total; i += conns {
				at := start + int64(i)*interval
				sleepUntil(at)
				if err := get(c.c, c.br, "/"); err != nil {
					firstErr.CompareAndSwap(nil, fmt.Errorf("request %d on connection %d: %w", i, k, err))
					failed.Add(int64((total - i + conns - 1) / conns)) // this one and the rest of the connection's
					return
				}
				if at >= measured {
					hists[k].Add(time.Duration(mono() - at))
					done.Add(1)
				}
			}
		}()
	}
	sleepUntil(measured)
	onMeasure()
	wg.Wait()
	res.elapsed = time.Duration(mono() - measured)
	for k := range hists {
		res.hist.Merge(&hists[k])
	}
	res.done, res.failed = int(done.Load()), int(failed.Load())
	if err, ok := firstErr.Load().(error); ok {
		res.err = err
	}
	return res
}

func (e *balancerBench) latencyRow(b *testing.B, addr string, px *childProc) {
	var cpu0 time.Duration
	warm := max(200*time.Millisecond, min(time.Second, e.sz.latDur/5))
	r := openLoop(addr, e.sz.rate, e.sz.latConns, warm, e.sz.latDur, func() {
		if px != nil {
			cpu0 = procCPU(px.pid)
		}
		b.ResetTimer()
	})
	b.StopTimer()
	if r.done == 0 {
		b.Fatalf("no request completed: %v", r.err)
	}
	b.ReportMetric(µs(r.hist.Quantile(0.50)), "p50-µs")
	b.ReportMetric(µs(r.hist.Quantile(0.99)), "p99-µs")
	b.ReportMetric(float64(r.done)/r.elapsed.Seconds(), "req/s")
	if px != nil {
		b.ReportMetric(µs(procCPU(px.pid)-cpu0)/float64(r.done), "proxy-cpu-µs/req")
	}
	b.ReportMetric(float64(r.failed), "errors")
	if r.failed > 0 || r.err != nil {
		b.Errorf("%d requests failed: %v", r.failed, r.err)
	}
	if got := float64(r.done) / r.elapsed.Seconds(); got < 0.9*float64(e.sz.rate) {
		b.Logf("%.0f req/s of the %d scheduled: the client fell behind, latencies include its queue", got, e.sz.rate)
	}
}

// Bulk

// The bulk streams carry byte i%251 at offset i: a prime period, so that a
// lost, repeated or misplaced run of bytes shows.
const bulkPeriod = 251

var bulkPattern = func() []byte {
	p := make([]byte, 256<<10+bulkPeriod)
	for i := range p {
		p[i] = byte(i % bulkPeriod)
	}
	return p
}()

// writePattern writes n bytes of the pattern.
func writePattern(w io.Writer, n int64) error {
	for off := int64(0); off < n; {
		k := min(int64(256<<10), n-off)
		s := int(off % bulkPeriod)
		if _, err := w.Write(bulkPattern[s : s+int(k)]); err != nil {
			return fmt.Errorf("writing at %d of %d: %w", off, n, err)
		}
		off += k
	}
	return nil
}

// readPattern reads n bytes and checks them against the pattern; on an
// error, at is the offset of the wrong byte, or where the stream failed.
func readPattern(r io.Reader, n int64) (at int64, err error) {
	buf := make([]byte, 256<<10)
	for off := int64(0); off < n; {
		k, err := r.Read(buf[:min(int64(len(buf)), n-off)])
		if k > 0 {
			s := int(off % bulkPeriod)
			if !bytes.Equal(buf[:k], bulkPattern[s:s+k]) {
				for i := range k {
					if buf[i] != bulkPattern[s+i] {
						return off + int64(i), fmt.Errorf("byte %d of %d is %d, want %d", off+int64(i), n, buf[i], bulkPattern[s+i])
					}
				}
			}
			off += int64(k)
		}
		if err != nil && off < n {
			return off, fmt.Errorf("reading at %d of %d: %w", off, n, err)
		}
	}
	return n, nil
}

// bulkOnce sends "BULK n\n" and n bytes while reading n bytes and the
// backend's trailer: when (unix ns) it had the last byte, and its check.
func bulkOnce(addr string, n int64) (up, down time.Duration, err error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return 0, 0, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(60*time.Second + time.Duration(n/(5<<20))*time.Second)) // 5 MiB/s at least
	t0 := time.Now()
	if _, err := fmt.Fprintf(c, "BULK %d\n", n); err != nil {
		return 0, 0, err
	}
	werr := make(chan error, 1)
	go func() { werr <- writePattern(c, n) }()
	if _, err := readPattern(c, n); err != nil {
		return 0, 0, fmt.Errorf("backend to client: %w", err)
	}
	down = time.Since(t0)
	if err := <-werr; err != nil {
		return 0, 0, fmt.Errorf("client to backend: %w", err)
	}
	var trailer [16]byte
	if _, err := io.ReadFull(c, trailer[:]); err != nil {
		return 0, 0, fmt.Errorf("the backend's trailer: %w", err)
	}
	if bad := int64(binary.BigEndian.Uint64(trailer[8:])); bad != 0 {
		return 0, 0, fmt.Errorf("client to backend: the backend found a wrong byte, or the stream failed, at %d of %d", bad-1, n)
	}
	up = time.Duration(int64(binary.BigEndian.Uint64(trailer[:8])) - t0.UnixNano())
	return up, down, nil
}

func (e *balancerBench) bulkRow(b *testing.B, addr string, px *childProc) {
	var cpu0 time.Duration
	if px != nil {
		cpu0 = procCPU(px.pid)
	}
	var up, down time.Duration
	b.ResetTimer()
	for range b.N {
		u, d, err := bulkOnce(addr, e.sz.bulk)
		if err != nil {
			b.Fatal(err)
		}
		up += u
		down += d
	}
	b.StopTimer()
	moved := float64(e.sz.bulk) * float64(b.N) // each way
	b.ReportMetric(moved/(1<<20)/up.Seconds(), "up-MiB/s")
	b.ReportMetric(moved/(1<<20)/down.Seconds(), "down-MiB/s")
	if px != nil {
		b.ReportMetric(float64((procCPU(px.pid)-cpu0).Milliseconds())/(2*moved/(1<<30)), "proxy-cpu-ms/GiB")
	}
}

// Memory

func (e *balancerBench) memoryRow(b *testing.B, addr string, px *childProc) {
	n := e.sz.idle
	echo := func() (net.Conn, error) {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			return nil, err
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		var one [1]byte
		if _, err = c.Write([]byte{'x'}); err == nil {
			_, err = io.ReadFull(c, one[:])
		}
		if err != nil || one[0] != 'x' {
			c.Close()
			return nil, fmt.Errorf("echo through the proxy: %q, %v", one[:], err)
		}
		c.SetDeadline(time.Time{})
		return c, nil
	}
	for range 2 { // both backends once, the proxy warm
		c, err := echo()
		if err != nil {
			b.Fatal(err)
		}
		c.Close()
	}
	time.Sleep(300 * time.Millisecond)
	before, fds0 := procRSS(px.pid), procFDs(px.pid)
	b.ResetTimer()
	conns, failed, firstErr := openMany(n, echo)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	if failed > 0 {
		b.Fatalf("%d of %d connections failed; the first: %v", failed, n, firstErr)
	}
	time.Sleep(500 * time.Millisecond)
	after, fds := procRSS(px.pid), procFDs(px.pid)
	b.StopTimer()
	b.ReportMetric(float64(after-before)/float64(n), "proxy-B/conn")
	b.ReportMetric(float64(fds-fds0)/float64(n), "proxy-fds/conn")
	b.ReportMetric(float64(n), "conns")
	for _, c := range conns {
		c.Close()
	}
	conns = nil
}

// The backends: this test binary, re-executed with envBalancerBackend set
// to http (herd's protocol/http, "Hello, World!" on one loop), bulk (see
// bulkOnce) or hold (echoes what it reads, and keeps the connection until
// the peer closes it). It prints "addr pid" and serves until stdin closes.
func balancerBackendMain(kind string) int {
	var addr string
	switch kind {
	case "http":
		w := &herd.Worker{Addr: "tcp://127.0.0.1:0", Count: 1, Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))}
		hello := []byte("Hello, World!")
		srv := &herdhttp.Server{Handler: func(rw *herdhttp.ResponseWriter, r *herdhttp.Request) {
			rw.Header().Set("Content-Type", "text/plain")
			rw.Write(hello)
		}}
		if err := srv.Attach(w); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		if err := w.Listen(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		go w.Run(context.Background())
		addr = w.ListenAddr().String()
	case "bulk", "hold":
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		addr = l.Addr().String()
		serve := serveHold
		if kind == "bulk" {
			serve = serveBulk
		}
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					fmt.Fprintln(os.Stderr, "accept:", err)
					return
				}
				go serve(c)
			}
		}()
	default:
		fmt.Fprintf(os.Stderr, "%s=%q: want http, bulk or hold\n", envBalancerBackend, kind)
		return 1
	}
	fmt.Printf("%s %d\n", addr, os.Getpid())
	io.Copy(io.Discard, os.Stdin)
	return 0
}

// serveHold echoes with a small buffer and a plain loop (io.Copy between
// TCP connections would splice through a pipe: two more files each).
func serveHold(c net.Conn) {
	defer c.Close()
	buf := make([]byte, 64)
	for {
		n, err := c.Read(buf)
		if n > 0 {
			if _, err := c.Write(buf[:n]); err != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// serveBulk reads "BULK n\n", then writes n bytes of the pattern while it
// reads and checks n, then the trailer: when it had the last byte (unix
// ns), and 0, or 1 + the offset of the first wrong byte (or of where the
// stream failed).
func serveBulk(c net.Conn) {
	defer c.Close()
	br := bufio.NewReaderSize(c, 64)
	line, err := br.ReadString('\n')
	if err != nil {
		return
	}
	n, err := strconv.ParseInt(strings.TrimPrefix(strings.TrimSpace(line), "BULK "), 10, 64)
	if err != nil {
		fmt.Fprintf(os.Stderr, "bulk: bad request %q\n", line)
		return
	}
	werr := make(chan error, 1)
	go func() { werr <- writePattern(c, n) }()
	var bad uint64
	if at, err := readPattern(br, n); err != nil {
		fmt.Fprintln(os.Stderr, "bulk: client to backend:", err)
		bad = uint64(at) + 1
	}
	got := time.Now().UnixNano()
	if err := <-werr; err != nil {
		fmt.Fprintln(os.Stderr, "bulk: backend to client:", err)
		return
	}
	var trailer [16]byte
	binary.BigEndian.PutUint64(trailer[:8], uint64(got))
	binary.BigEndian.PutUint64(trailer[8:], bad)
	c.Write(trailer[:])
	io.Copy(io.Discard, br) // until the client closes
}
