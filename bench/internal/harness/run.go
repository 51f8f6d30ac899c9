package harness

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"strconv"
	"time"

	"github.com/seed358e4494/herd/bench/internal/cfloor"
)

// Client is a load-generator child process.
type Client struct {
	cmd   *exec.Cmd
	stdin *os.File
	lines chan string
	done  chan error
}

// StartClient starts exe (which must call ClientMain when IsClient) as the
// load generator with cfg, and waits until it has connected.
func StartClient(exe string, args []string, cfg ClientConfig) (*Client, error) {
	b, err := json.Marshal(cfg)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(exe, args...)
	cmd.Env = append(os.Environ(), clientEnv+"="+string(b))
	cmd.Stderr = os.Stderr
	pr, pw, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	cmd.Stdin = pr
	out, err := cmd.StdoutPipe()
	if err != nil {
		pr.Close()
		pw.Close()
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		pr.Close()
		pw.Close()
		return nil, err
	}
	pr.Close()
	c := &Client{cmd: cmd, stdin: pw, lines: make(chan string, 4), done: make(chan error, 1)}
	go func() {
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			c.lines <- sc.Text()
		}
		close(c.lines)
		c.done <- cmd.Wait()
	}()
	if _, err := c.line(60 * time.Second); err != nil {
		c.Kill()
		return nil, fmt.Errorf("load generator did not get ready: %w", err)
	}
	return c, nil
}

func (c *Client) line(timeout time.Duration) (string, error) {
	select {
	case l, ok := <-c.lines:
		if !ok {
			return "", errors.New("load generator exited")
		}
		return l, nil
	case <-time.After(timeout):
		return "", errors.New("load generator timed out")
	}
}

// Run asks for count operations, or with count 0 for as many as fit in dur.
func (c *Client) Run(count int64, dur time.Duration) (ClientResult, error) {
	var res ClientResult
	if _, err := fmt.Fprintf(c.stdin, "run %d %d\n", count, int64(dur)); err != nil {
		return res, err
	}
	l, err := c.line(dur + 90*time.Second)
	if err != nil {
		return res, err
	}
	if err := json.Unmarshal([]byte(l), &res); err != nil {
		return res, fmt.Errorf("load generator said %q: %w", l, err)
	}
	if res.Errors > 0 {
		return res, fmt.Errorf("load generator: %d connection(s) failed, first: %s", res.Errors, res.Err)
	}
	return res, nil
}

// Close tells the child to quit and waits for it (killing it after a while).
func (c *Client) Close() {
	fmt.Fprintln(c.stdin, "quit")
	c.stdin.Close()
	select {
	case <-c.done:
	case <-time.After(10 * time.Second):
		c.Kill()
	}
}

// Kill ends the child at once.
func (c *Client) Kill() {
	c.cmd.Process.Kill()
	c.stdin.Close()
	select {
	case <-c.done:
	case <-time.After(5 * time.Second):
	}
}

// Case is one load pattern.
type Case struct {
	Name  string // echo-64B-c50, http-keepalive, ...
	Proto Proto
	Kind  string
	Conns int
	Size  int
	Depth int
}

// Cases is the load matrix of the study.
var Cases = []Case{
	{Name: "echo-64B-c50", Proto: Echo, Kind: KindEcho, Conns: 50, Size: 64},
	{Name: "echo-64B-c500", Proto: Echo, Kind: KindEcho, Conns: 500, Size: 64},
	{Name: "echo-4KiB-c50", Proto: Echo, Kind: KindEcho, Conns: 50, Size: 4096},
	{Name: "echo-4KiB-c500", Proto: Echo, Kind: KindEcho, Conns: 500, Size: 4096},
	{Name: "http-keepalive-c50", Proto: HTTP, Kind: KindHTTP, Conns: 50, Depth: 1},
	{Name: "http-pipelined16-c50", Proto: HTTP, Kind: KindHTTP, Conns: 50, Depth: 16},
	{Name: "http-close-c50", Proto: HTTP, Kind: KindHTTPClose, Conns: 50},
	// Fewer long-lived connections than loops: where a reuseport hash is
	// blind to load. Servers run 4 loops only.
	{Name: "longlived-4conns", Proto: Echo, Kind: KindEcho, Conns: 4, Size: 64},
}

// CaseByName finds a case.
func CaseByName(name string) (Case, bool) {
	for _, c := range Cases {
		if c.Name == name {
			return c, true
		}
	}
	return Case{}, false
}

// Specs is the server matrix for a case: herd in its listen modes (round
// robin only where connections come and go: short connections, a few
// long-lived ones), gnet with and without reuseport and the C floor (where
// built) at each loop count, and the std peer.
func Specs(c Case) []Spec {
	counts := []int{1, 2, 4}
	if c.Name == "longlived-4conns" {
		counts = []int{4}
	}
	modes := []string{"reuseport", "shared", "leastconns"}
	if c.Kind == KindHTTPClose || c.Name == "longlived-4conns" {
		modes = append(modes, "roundrobin")
	}
	var out []Spec
	for _, n := range counts {
		for _, m := range modes {
			out = append(out, Spec{Impl: "herd", Mode: m, Count: n})
		}
		for _, m := range []string{"reuseport", "noreuse"} {
			out = append(out, Spec{Impl: "gnet", Mode: m, Count: n})
		}
		if cfloor.Available {
			out = append(out, Spec{Impl: "cfloor", Mode: "reuseport", Count: n})
		}
	}
	if c.Proto == Echo {
		out = append(out, Spec{Impl: "stdnet"})
	} else {
		out = append(out, Spec{Impl: "nethttp"})
	}
	return out
}

// Session is a server under test with its load generator connected.
type Session struct {
	Case   Case
	Spec   Spec
	Server Server
	Client *Client
}

// Open starts the server and the load generator (exe with args, see
// StartClient), and waits until the server holds the client's connections.
func Open(exe string, args []string, c Case, s Spec) (*Session, error) {
	srv, err := Start(s, c.Proto)
	if err != nil {
		return nil, err
	}
	cl, err := StartClient(exe, args, ClientConfig{Kind: c.Kind, Addr: srv.Addr(), Conns: c.Conns, Size: c.Size, Depth: c.Depth})
	if err != nil {
		srv.Stop()
		return nil, err
	}
	ss := &Session{Case: c, Spec: s, Server: srv, Client: cl}
	if c.Kind != KindHTTPClose {
		if err := WaitActive(srv, c.Conns, 30*time.Second); err != nil {
			ss.Close()
			return nil, err
		}
	}
	return ss, nil
}

// WaitActive waits until srv has n open connections.
func WaitActive(srv Server, n int, timeout time.Duration) error {
	end := time.Now().Add(timeout)
	for srv.Active() < n {
		if time.Now().After(end) {
			return fmt.Errorf("server has %d connections, want %d", srv.Active(), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
	return nil
}

// Close stops the client, then the server.
func (s *Session) Close() {
	s.Client.Close()
	s.Server.Stop()
}

// Result is one measured window.
type Result struct {
	Ops        int64
	Elapsed    time.Duration
	ServerCPU  time.Duration
	VolCSW     int64
	Mallocs    uint64
	P50, P99   time.Duration
	PerLoop    []LoopCount // work and accepts in the window
	LoopsUsed  int         // loops that did any work
	Jain       float64     // over per-loop work (accepts for http-close); NaN without loops
	AcceptJain float64     // over per-loop accepted connections; NaN without loops
	Accepted   uint64
	ClientWall time.Duration
	Syscalls   int64 // server system calls in the window; 0 unless SyscallsEnv is set
}

// OpsPerSec is the throughput.
func (r Result) OpsPerSec() float64 { return float64(r.Ops) / r.Elapsed.Seconds() }

// CPUPerOp is server CPU microseconds per operation.
func (r Result) CPUPerOp() float64 {
	return float64(r.ServerCPU) / float64(time.Microsecond) / float64(max(r.Ops, 1))
}

// CSWPerOp is voluntary context switches per operation.
func (r Result) CSWPerOp() float64 { return float64(r.VolCSW) / float64(max(r.Ops, 1)) }

// AllocsPerOp is server heap allocations per operation.
func (r Result) AllocsPerOp() float64 { return float64(r.Mallocs) / float64(max(r.Ops, 1)) }

// Measure runs one window of count operations (or dur with count 0) and
// reads the server's CPU time, context switches, allocations and per-loop
// counters over it. Between begin and end the calling process must do
// nothing but serve.
func (s *Session) Measure(count int64, dur time.Duration, begin, end func()) (Result, error) {
	var sc *syscallCounter
	if os.Getenv(SyscallsEnv) != "" {
		var err error
		if sc, err = startSyscallCounter(); err != nil {
			return Result{}, err
		}
	}
	before := s.Server.Loops()
	var ms0, ms1 runtime.MemStats
	runtime.ReadMemStats(&ms0)
	if begin != nil {
		begin()
	}
	u0 := SelfUsage()
	res, err := s.Client.Run(count, dur)
	u1 := SelfUsage()
	var nsys int64
	if sc != nil {
		n, serr := sc.stop()
		if serr != nil && err == nil {
			err = serr
		}
		nsys = n
	}
	if end != nil {
		end()
	}
	runtime.ReadMemStats(&ms1)
	if err != nil {
		return Result{}, err
	}
	after := s.Server.Loops()
	u := u1.Sub(u0)
	r := Result{Ops: res.Ops, Elapsed: res.Elapsed, ServerCPU: u.CPU, VolCSW: u.VolCSW, Mallocs: ms1.Mallocs - ms0.Mallocs, P50: res.P50, P99: res.P99, Jain: Jain(nil), AcceptJain: Jain(nil), Syscalls: nsys}
	if after != nil {
		r.PerLoop = make([]LoopCount, len(after))
		work := make([]uint64, len(after))
		acc := make([]uint64, len(after))
		for i, a := range after {
			var b LoopCount
			if i < len(before) {
				b = before[i]
			}
			r.PerLoop[i] = LoopCount{Accepted: a.Accepted - b.Accepted, Work: a.Work - b.Work}
			work[i], acc[i] = r.PerLoop[i].Work, r.PerLoop[i].Accepted
			r.Accepted += acc[i]
			if work[i] > 0 {
				r.LoopsUsed++
			}
		}
		// gnet loops appear in Loops once they got a connection: pad to
		// the loop count so an idle loop counts in the index.
		for len(work) < s.Spec.Count {
			work = append(work, 0)
			acc = append(acc, 0)
			r.PerLoop = append(r.PerLoop, LoopCount{})
		}
		if s.Case.Kind == KindHTTPClose {
			r.AcceptJain = Jain(acc)
		} else {
			// Long-lived connections were accepted before the window:
			// count them since the server started.
			held := make([]uint64, max(len(after), s.Spec.Count))
			for i, a := range after {
				held[i] = a.Accepted
			}
			r.AcceptJain = Jain(held)
		}
		if s.Case.Kind == KindHTTPClose {
			r.Jain = Jain(acc)
		} else {
			r.Jain = Jain(work)
		}
	}
	if s.Case.Kind == KindHTTPClose && r.Accepted == 0 {
		r.Accepted = uint64(r.Ops)
	}
	return r, nil
}

// IdleResult is the memory an idle connection costs the server.
type IdleResult struct {
	Conns            int
	RSSPerConn       float64 // bytes
	HeapPerConn      float64 // bytes of Go heap in use
	RSSBase, RSSLoad int64
}

// MeasureIdle starts the server, opens n idle connections from a child
// process and reports the growth of the server process's RSS per
// connection, after a GC and returning freed memory to the OS at both ends.
func MeasureIdle(exe string, args []string, s Spec, p Proto, n int) (IdleResult, error) {
	srv, err := Start(s, p)
	if err != nil {
		return IdleResult{}, err
	}
	defer srv.Stop()
	settle := func() (int64, uint64) {
		runtime.GC()
		debug.FreeOSMemory()
		time.Sleep(100 * time.Millisecond)
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return RSS(), ms.HeapInuse
	}
	// Warm the server with a few connections first, so one-time costs (the
	// loops' read buffers, the poller) are in the baseline.
	warm, err := StartClient(exe, args, ClientConfig{Kind: KindIdle, Addr: srv.Addr(), Conns: 8})
	if err != nil {
		return IdleResult{}, err
	}
	if err := WaitActive(srv, 8, 30*time.Second); err != nil {
		warm.Kill()
		return IdleResult{}, err
	}
	warm.Close()
	end := time.Now().Add(10 * time.Second)
	for srv.Active() > 0 && time.Now().Before(end) {
		time.Sleep(5 * time.Millisecond)
	}
	rss0, heap0 := settle()
	cl, err := StartClient(exe, args, ClientConfig{Kind: KindIdle, Addr: srv.Addr(), Conns: n})
	if err != nil {
		return IdleResult{}, err
	}
	defer cl.Close()
	if err := WaitActive(srv, n, 60*time.Second); err != nil {
		return IdleResult{}, err
	}
	rss1, heap1 := settle()
	return IdleResult{
		Conns:       n,
		RSSPerConn:  float64(rss1-rss0) / float64(n),
		HeapPerConn: (float64(heap1) - float64(heap0)) / float64(n),
		RSSBase:     rss0,
		RSSLoad:     rss1,
	}, nil
}

// IdleSpecs are the servers of the idle-memory study.
func IdleSpecs() []Spec {
	specs := []Spec{
		{Impl: "herd", Mode: "reuseport", Count: 2},
		{Impl: "herd", Mode: "shared", Count: 2},
		{Impl: "herd", Mode: "leastconns", Count: 2},
		{Impl: "gnet", Mode: "reuseport", Count: 2},
		{Impl: "gnet", Mode: "noreuse", Count: 2},
		{Impl: "stdnet"},
	}
	if cfloor.Available {
		specs = append(specs, Spec{Impl: "cfloor", Mode: "reuseport", Count: 2})
	}
	return specs
}

// EnvInt reads an integer from the environment, def when unset or bad.
func EnvInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}
