//go:build linux

package bench

import (
	"bufio"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/seed358e4494/herd/bench/internal/harness"
	"github.com/seed358e4494/herd/redis/redistest"
)

// The gateway benchmark: 10,000 client connections in all, each bound to a
// uid of its own and a member of one of 100 groups, on one node or on two
// nodes joined by a redis-server; a sender on the first node sends
// SendToAll, SendToGroup (a random group) or SendToUid (a random uid), each
// message stamped with the time it was sent. One op is one message sent.
// Reported: deliveries per second, p50/p99 delivery latency (send to
// receipt, the clients being this process), and the CPU the nodes (and
// redis-server) spent per delivery, read from /proc. A window bounds the
// deliveries in flight (2,000, or one message's), so no queue overflows
// and the latency is not only queueing: every delivery must arrive, and
// the sender's node must drop nothing. The -alone cases send one message
// at a time, the next once the last has reached every receiver: their
// latency is a message's own, without queueing.
//
//	go test -run '^$' -bench Gateway -benchtime 200x
const (
	gatewayClients = 10000
	gatewayGroups  = 100
	gatewayWindow  = 2000 // deliveries in flight at most (at least one message's)
)

func BenchmarkGateway(b *testing.B) {
	parent := b // what the sub-benchmarks share (Redis, the node binary) lives as long as it
	for _, topo := range []struct {
		name         string
		nodes        int
		uidBroadcast bool
	}{{"one-node", 1, false}, {"two-nodes", 2, false}, {"two-nodes-uid-broadcast", 2, true}} {
		var cl *gatewayCluster
		// Each kind under load (a window of deliveries in flight), then
		// one message at a time (latency without queueing).
		kinds := []string{"all", "group", "uid", "all-alone", "group-alone", "uid-alone"}
		if topo.uidBroadcast {
			kinds = []string{"uid", "uid-alone"} // the other kinds do not change
		}
		for _, kind := range kinds {
			b.Run(topo.name+"/"+kind, func(b *testing.B) {
				if cl == nil {
					cl = startGatewayCluster(b, parent, topo.nodes, topo.uidBroadcast)
				}
				cl.run(b, kind)
			})
		}
		if cl != nil {
			cl.close()
		}
	}
}

type gatewayCluster struct {
	procs   []*exec.Cmd
	redis   *redistest.Server
	clients []*gatewayClient
	sender  net.Conn
	senderR *bufio.Reader

	delivered atomic.Int64
	hist      harness.Hist // AddConcurrent by the readers
}

type gatewayClient struct {
	conn net.Conn
}

func buildGatewayNode(b, parent *testing.B) string {
	bin := filepath.Join(parent.TempDir(), "node")
	build := exec.Command("go", "build", "-o", bin, "./internal/cmd/node")
	build.Dir = "../redis"
	if out, err := build.CombinedOutput(); err != nil {
		b.Fatalf("building the gateway node: %v\n%s", err, out)
	}
	return bin
}

var nodeListening = regexp.MustCompile(`listening on (\S+) pid`)

func startGatewayCluster(b, parent *testing.B, nodes int, uidBroadcast bool) *gatewayCluster {
	cl := &gatewayCluster{}
	bin := buildGatewayNode(b, parent)
	var addrs []string
	for i := range nodes {
		args := []string{"-count", "2", "-node", fmt.Sprintf("n%d", i)}
		if nodes > 1 {
			if cl.redis == nil {
				cl.redis = redistest.Start(parent)
			}
			args = append(args, "-redis", cl.redis.Addr)
		}
		if uidBroadcast {
			args = append(args, "-uid-broadcast")
		}
		cmd := exec.Command(bin, args...)
		cmd.Stderr = os.Stderr
		out, _ := cmd.StdoutPipe()
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		cl.procs = append(cl.procs, cmd)
		sc := bufio.NewScanner(out)
		if !sc.Scan() {
			b.Fatal("the node printed nothing")
		}
		m := nodeListening.FindStringSubmatch(sc.Text())
		if m == nil {
			b.Fatalf("the node printed %q", sc.Text())
		}
		addrs = append(addrs, m[1])
		go func() {
			for sc.Scan() {
			}
		}()
	}
	// The clients: uid u<i>, group g<i mod 100>, spread over the nodes.
	for i := range gatewayClients {
		c, err := net.DialTimeout("tcp", addrs[i%nodes], 10*time.Second)
		if err != nil {
			cl.close()
			b.Fatalf("client %d: %v", i, err)
		}
		fmt.Fprintf(c, "bind u%d\njoin g%d\n", i, i%gatewayGroups)
		cl.clients = append(cl.clients, &gatewayClient{conn: c})
		go cl.read(c)
	}
	var err error
	if cl.sender, err = net.Dial("tcp", addrs[0]); err != nil {
		b.Fatal(err)
	}
	cl.senderR = bufio.NewReader(cl.sender)
	// Every membership is in place, on every node, when a group's count
	// says so on the sender's node.
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		fmt.Fprintf(cl.sender, "count g%d\n", gatewayGroups-1)
		line, _ := cl.senderR.ReadString('\n')
		if strings.HasPrefix(line, fmt.Sprintf("count g%d %d ", gatewayGroups-1, gatewayClients/gatewayGroups)) {
			break
		}
		if time.Now().After(deadline) {
			cl.close()
			b.Fatalf("memberships not in place: %q", line)
		}
	}
	return cl
}

// read counts the deliveries to one client and their latencies. Each
// delivery is "<kind> <unix nanoseconds when sent>".
func (cl *gatewayCluster) read(c net.Conn) {
	sc := bufio.NewScanner(c)
	for sc.Scan() {
		_, ts, ok := strings.Cut(sc.Text(), " ")
		sent, err := strconv.ParseInt(ts, 10, 64)
		if !ok || err != nil {
			continue
		}
		cl.hist.AddConcurrent(time.Duration(time.Now().UnixNano() - sent))
		cl.delivered.Add(1)
	}
}

// cpu is the CPU time the nodes and redis-server have used.
func (cl *gatewayCluster) cpu() time.Duration {
	var total time.Duration
	pids := []int{}
	for _, p := range cl.procs {
		pids = append(pids, p.Process.Pid)
	}
	if cl.redis != nil {
		pids = append(pids, cl.redis.PID())
	}
	for _, pid := range pids {
		total += procCPU(pid)
	}
	return total
}

// procCPU reads a process's user and system time from /proc (clock ticks
// of 10ms).
func procCPU(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * 10 * time.Millisecond
}

func (cl *gatewayCluster) stat(name string) int {
	fmt.Fprint(cl.sender, "stats\n")
	line, _ := cl.senderR.ReadString('\n')
	m := regexp.MustCompile(name + `=(\d+)`).FindStringSubmatch(line)
	if m == nil {
		return -1
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

func (cl *gatewayCluster) run(b *testing.B, kind string) {
	kind, alone := strings.CutSuffix(kind, "-alone")
	fanout := map[string]int{"all": gatewayClients, "group": gatewayClients / gatewayGroups, "uid": 1}[kind]
	window := int64(max(gatewayWindow, fanout))
	if alone {
		window = int64(fanout) - 1 // the next message goes once the last one has arrived everywhere
	}
	cl.hist = harness.Hist{} // no delivery is in flight between runs
	start := cl.delivered.Load()
	cpu0 := cl.cpu()
	w := bufio.NewWriter(cl.sender)
	rng := rand.New(rand.NewPCG(1, 2))
	b.ResetTimer()
	t0 := time.Now()
	for i := 0; i < b.N; i++ {
		// Keep at most gatewayWindow deliveries in flight.
		for int64(i*fanout)-(cl.delivered.Load()-start) > window {
			w.Flush()
			if !alone {
				time.Sleep(50 * time.Microsecond)
			}
		}
		now := time.Now().UnixNano()
		switch kind {
		case "all":
			fmt.Fprintf(w, "toall all %d\n", now)
		case "group":
			fmt.Fprintf(w, "togroup g%d group %d\n", rng.IntN(gatewayGroups), now)
		case "uid":
			fmt.Fprintf(w, "touid u%d uid %d\n", rng.IntN(gatewayClients), now)
		}
		if alone || i%16 == 15 {
			w.Flush()
		}
	}
	w.Flush()
	want := int64(b.N * fanout)
	deadline := time.Now().Add(60 * time.Second)
	for cl.delivered.Load()-start < want && time.Now().Before(deadline) {
		time.Sleep(100 * time.Microsecond)
	}
	elapsed := time.Since(t0)
	b.StopTimer()
	got := cl.delivered.Load() - start
	if got != want {
		b.Fatalf("%d deliveries of %d", got, want)
	}
	cpu := cl.cpu() - cpu0
	p50, p99 := cl.hist.Quantile(0.50), cl.hist.Quantile(0.99)
	b.ReportMetric(float64(got)/elapsed.Seconds(), "deliveries/s")
	b.ReportMetric(float64(p50.Microseconds()), "p50-µs")
	b.ReportMetric(float64(p99.Microseconds()), "p99-µs")
	b.ReportMetric(float64(cpu.Nanoseconds())/1e3/float64(got), "node-cpu-µs/delivery")
	if d := cl.stat("dropped"); d > 0 {
		b.Errorf("the sender's node dropped %d publications", d)
	}
}

func (cl *gatewayCluster) close() {
	for _, c := range cl.clients {
		c.conn.Close()
	}
	if cl.sender != nil {
		cl.sender.Close()
	}
	for _, p := range cl.procs {
		p.Process.Kill()
		p.Wait()
	}
}

// The gateway at N nodes: 1, 2, 4 and 8 receiving node processes, each
// with scaleClientsPerNode clients (uid u<i> of their own; groups of
// scaleGroupSize members, each group on one node), and a sender node with
// no clients, all joined by one redis-server or by a local 3-master Redis
// Cluster (sharded pub/sub). The sender sends to a random uid, a random
// group, or to all. Reported per message sent: how many node processes
// received it (the sum of the nodes' Stats.Received; routed by presence,
// a uid or group message reaches its one node at any N, a message to all
// every node), and the CPU the receiving nodes spent on it, in all
// (node-cpu-µs/msg) and per node (per-node-cpu-µs/msg); every delivery is
// checked and no node may count a stray message for uid and group sends.
//
//	go test -run '^$' -bench GatewayNodes -benchtime 2000x
const (
	scaleClientsPerNode = 100
	scaleGroupSize      = 10
)

func BenchmarkGatewayNodes(b *testing.B) {
	parent := b
	for _, broker := range []string{"redis", "cluster"} {
		for _, nodes := range []int{1, 2, 4, 8} {
			var sc *scaleCluster
			for _, kind := range []string{"uid", "group", "all"} {
				b.Run(fmt.Sprintf("%s/nodes=%d/%s", broker, nodes, kind), func(b *testing.B) {
					if sc == nil {
						sc = startScaleCluster(b, parent, broker, nodes)
					}
					sc.run(b, kind)
				})
			}
			if sc != nil {
				sc.close()
			}
		}
	}
}

type scaleCluster struct {
	nodes     int
	procs     []*exec.Cmd // procs[0] is the sender's node
	ctl       []*bufio.ReadWriter
	conns     []net.Conn
	delivered atomic.Int64
	stop      func() // the broker's servers
}

func startScaleCluster(b, parent *testing.B, broker string, nodes int) *scaleCluster {
	bin := buildGatewayNode(b, parent)
	sc := &scaleCluster{nodes: nodes}
	var args []string
	switch broker {
	case "redis":
		r := redistest.Start(parent)
		sc.stop = func() { r.Stop(parent) }
		args = []string{"-redis", r.Addr}
	case "cluster":
		c := redistest.StartCluster(parent, 3, 0)
		sc.stop = func() { c.Stop(parent) }
		args = []string{"-cluster", "-redis", strings.Join(c.Addrs, ",")}
	}
	var addrs []string
	for i := range nodes + 1 {
		cmd := exec.Command(bin, append([]string{"-count", "1", "-node", fmt.Sprintf("s%d", i)}, args...)...)
		cmd.Stderr = os.Stderr
		out, _ := cmd.StdoutPipe()
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		sc.procs = append(sc.procs, cmd)
		s := bufio.NewScanner(out)
		if !s.Scan() {
			b.Fatal("the node printed nothing")
		}
		m := nodeListening.FindStringSubmatch(s.Text())
		if m == nil {
			b.Fatalf("the node printed %q", s.Text())
		}
		addrs = append(addrs, m[1])
		go func() {
			for s.Scan() {
			}
		}()
		c, err := net.DialTimeout("tcp", m[1], 10*time.Second)
		if err != nil {
			b.Fatal(err)
		}
		sc.conns = append(sc.conns, c)
		sc.ctl = append(sc.ctl, bufio.NewReadWriter(bufio.NewReader(c), bufio.NewWriter(c)))
	}
	// Client i is on receiving node i%nodes, in group g<node>_<k>.
	total := nodes * scaleClientsPerNode
	for i := range total {
		node := i % nodes
		c, err := net.DialTimeout("tcp", addrs[1+node], 10*time.Second)
		if err != nil {
			b.Fatalf("client %d: %v", i, err)
		}
		sc.conns = append(sc.conns, c)
		fmt.Fprintf(c, "bind u%d\njoin g%d_%d\n", i, node, (i/nodes)%(scaleClientsPerNode/scaleGroupSize))
		go func() {
			s := bufio.NewScanner(c)
			for s.Scan() {
				sc.delivered.Add(1)
			}
		}()
	}
	// Every membership is in place when the sender's node sees every
	// group full and every uid online. Each node writes presence in its
	// own batches (on a cluster, one pipeline per master), so one group
	// full says nothing of another node's clients, nor of another shard.
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		missing := sc.missingMembership(total)
		if missing == "" {
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("memberships not in place: %s", missing)
		}
	}
	return sc
}

// missingMembership is the first group not full or uid not online, as
// the sender's node sees them, or "".
func (sc *scaleCluster) missingMembership(total int) string {
	for node := range sc.nodes {
		for k := range scaleClientsPerNode / scaleGroupSize {
			g := fmt.Sprintf("g%d_%d", node, k)
			if line := sc.ask(0, "count "+g); !strings.HasPrefix(line, fmt.Sprintf("count %s %d ", g, scaleGroupSize)) {
				return fmt.Sprintf("%q", line)
			}
		}
	}
	for i := range total {
		if line := sc.ask(0, fmt.Sprintf("online u%d", i)); !strings.Contains(line, " true ") {
			return fmt.Sprintf("%q", line)
		}
	}
	return ""
}

// ask sends a query on a node's control connection and returns its
// answer, skipping what reached that connection as a client (the
// messages to all).
func (sc *scaleCluster) ask(node int, line string) string {
	rw := sc.ctl[node]
	rw.WriteString(line + "\n")
	rw.Flush()
	cmd, _, _ := strings.Cut(line, " ")
	for {
		got, err := rw.ReadString('\n')
		if err != nil || strings.HasPrefix(got, cmd+" ") {
			return strings.TrimSuffix(got, "\n")
		}
	}
}

// stats sums a figure of the receiving nodes' stats.
func (sc *scaleCluster) stats(name string) int {
	re := regexp.MustCompile(" " + name + `=(\d+)`)
	sum := 0
	for i := 1; i <= sc.nodes; i++ {
		m := re.FindStringSubmatch(sc.ask(i, "stats"))
		if m == nil {
			return -1
		}
		n, _ := strconv.Atoi(m[1])
		sum += n
	}
	return sum
}

// cpu is the CPU time of the receiving nodes.
func (sc *scaleCluster) cpu() time.Duration {
	var total time.Duration
	for _, p := range sc.procs[1:] {
		total += procCPU(p.Process.Pid)
	}
	return total
}

func (sc *scaleCluster) run(b *testing.B, kind string) {
	total := sc.nodes * scaleClientsPerNode
	fanout := map[string]int{"all": total, "group": scaleGroupSize, "uid": 1}[kind]
	window := int64(max(1000, fanout))
	received0, stray0 := sc.stats("received"), sc.stats("stray")
	start := sc.delivered.Load()
	cpu0 := sc.cpu()
	rw := sc.ctl[0]
	rng := rand.New(rand.NewPCG(3, 4))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for int64(i*fanout)-(sc.delivered.Load()-start) > window {
			rw.Flush()
			time.Sleep(50 * time.Microsecond)
		}
		switch kind {
		case "all":
			rw.WriteString("toall x\n")
		case "group":
			fmt.Fprintf(rw, "togroup g%d_%d x\n", rng.IntN(sc.nodes), rng.IntN(scaleClientsPerNode/scaleGroupSize))
		case "uid":
			fmt.Fprintf(rw, "touid u%d x\n", rng.IntN(total))
		}
	}
	rw.Flush()
	want := int64(b.N * fanout)
	for deadline := time.Now().Add(60 * time.Second); sc.delivered.Load()-start < want && time.Now().Before(deadline); {
		time.Sleep(100 * time.Microsecond)
	}
	b.StopTimer()
	if got := sc.delivered.Load() - start; got != want {
		b.Fatalf("%d deliveries of %d; the sender's node: %s", got, want, sc.ask(0, "stats"))
	}
	cpu := sc.cpu() - cpu0
	received := sc.stats("received") - received0
	if stray := sc.stats("stray") - stray0; stray != 0 {
		b.Errorf("the nodes received %d stray messages", stray)
	}
	b.ReportMetric(float64(received)/float64(b.N), "recv/msg")
	b.ReportMetric(float64(cpu.Nanoseconds())/1e3/float64(b.N), "node-cpu-µs/msg")
	b.ReportMetric(float64(cpu.Nanoseconds())/1e3/float64(b.N)/float64(sc.nodes), "per-node-cpu-µs/msg")
	b.ReportMetric(0, "ns/op")
}

func (sc *scaleCluster) close() {
	for _, c := range sc.conns {
		c.Close()
	}
	sc.conns = nil
	for _, p := range sc.procs {
		p.Process.Kill()
		p.Wait()
	}
	sc.procs = nil
	if sc.stop != nil {
		sc.stop()
	}
}
