//go:build linux

package redis_test

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/seed358e4494/herd/gateway"
	"github.com/seed358e4494/herd/redis/internal/node"
	"github.com/seed358e4494/herd/redis/redistest"
)

// nodeEnv, set in a process's environment, makes the test binary a node
// (internal/node) instead of running the tests: the tests start their
// nodes by running their own binary again.
const nodeEnv = "HERD_REDIS_TEST_NODE"

func TestMain(m *testing.M) {
	if os.Getenv(nodeEnv) == "1" {
		os.Exit(node.Main(os.Args[1:]))
	}
	os.Exit(m.Run())
}

// nodeProc is a gateway node process.
type nodeProc struct {
	name   string
	inc    string // its incarnation, as it printed it
	addr   string
	cmd    *exec.Cmd
	exited chan struct{}
}

var listening = regexp.MustCompile(`^node (\S+) listening on (\S+) pid (\d+) incarnation (\S+)$`)

// startNode runs a node joined to the Redis at redisAddr; it is stopped
// (SIGTERM, then SIGKILL) when the test ends.
// Extra arguments go to the node's command line.
func startNode(t *testing.T, redisAddr, name string, extra ...string) *nodeProc {
	n := &nodeProc{name: name, cmd: exec.Command(os.Args[0], append([]string{"-redis", redisAddr, "-node", name, "-count", "2"}, extra...)...)}
	n.cmd.Env = append(os.Environ(), nodeEnv+"=1")
	n.cmd.Stderr = os.Stderr
	out, err := n.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := n.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	n.exited = make(chan struct{})
	exited := n.exited
	go func() { n.cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		n.cmd.Process.Signal(syscall.SIGCONT) // if a test paused it
		n.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			n.cmd.Process.Kill()
			t.Errorf("node %s did not stop", name)
		}
	})
	line := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		if sc.Scan() {
			line <- sc.Text()
		}
		for sc.Scan() {
		}
	}()
	select {
	case l := <-line:
		m := listening.FindStringSubmatch(l)
		if m == nil {
			t.Fatalf("node %s printed %q", name, l)
		}
		n.addr, n.inc = m[2], m[4]
	case <-time.After(30 * time.Second):
		t.Fatalf("node %s did not start", name)
	}
	return n
}

// user is a client connection to a node.
type user struct {
	t     *testing.T
	id    string
	conn  net.Conn
	lines chan string
}

// kill ends the node as a crash would (SIGKILL: no OnClose, no cleanup)
// and waits for it to exit.
func (n *nodeProc) kill(t *testing.T) {
	t.Helper()
	if err := n.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	select {
	case <-n.exited:
	case <-time.After(10 * time.Second):
		t.Fatalf("node %s did not exit after SIGKILL", n.name)
	}
}

func (n *nodeProc) connect(t *testing.T) *user {
	c, err := net.DialTimeout("tcp", n.addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	u := &user{t: t, conn: c, lines: make(chan string, 20000)}
	go func() {
		sc := bufio.NewScanner(c)
		for sc.Scan() {
			u.lines <- sc.Text()
		}
		close(u.lines)
	}()
	u.send("id")
	u.id = strings.TrimPrefix(u.next(), "id ")
	return u
}

func (u *user) send(format string, a ...any) {
	u.t.Helper()
	if _, err := fmt.Fprintf(u.conn, format+"\n", a...); err != nil {
		u.t.Fatal(err)
	}
}

// next is the next line, within 10s.
func (u *user) next() string {
	u.t.Helper()
	select {
	case l, ok := <-u.lines:
		if !ok {
			u.t.Fatalf("client %s: connection closed", u.id)
		}
		return l
	case <-time.After(10 * time.Second):
		u.t.Fatalf("client %s: nothing within 10s", u.id)
	}
	return ""
}

func (u *user) expect(want string) {
	u.t.Helper()
	if got := u.next(); got != want {
		u.t.Fatalf("client %s: got %q, want %q", u.id, got, want)
	}
}

// quiet checks that nothing more arrives for a moment.
func (u *user) quiet() {
	u.t.Helper()
	select {
	case l := <-u.lines:
		u.t.Fatalf("client %s: got %q, want nothing", u.id, l)
	case <-time.After(200 * time.Millisecond):
	}
}

// ask sends a query and returns its answer, until cond holds on it (or
// 10s pass).
func (u *user) ask(query string, cond func(string) bool) string {
	u.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		u.send("%s", query)
		got := u.next()
		if cond(got) {
			return got
		}
		if time.Now().After(deadline) {
			u.t.Fatalf("client %s: %q answered %q", u.id, query, got)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// stat reads one figure of the node's stats line.
func (u *user) stat(name string) int {
	u.t.Helper()
	u.send("stats")
	line := u.next()
	m := regexp.MustCompile(name + `=(\d+)`).FindStringSubmatch(line)
	if m == nil {
		u.t.Fatalf("no %s in %q", name, line)
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

func TestUidAcrossNodes(t *testing.T) {
	r := redistest.Start(t)
	a, b := startNode(t, r.Addr, "a"), startNode(t, r.Addr, "b")
	sender, bob1, bob2, other := a.connect(t), b.connect(t), a.connect(t), b.connect(t)
	bob1.send("bind bob")
	bob2.send("bind bob")
	sender.ask("online bob", func(s string) bool { return strings.HasPrefix(s, "online bob true") })
	sender.ask("alive "+bob1.id, func(s string) bool { return strings.HasPrefix(s, "alive "+bob1.id+" true") })
	// Wait until node a sees both of bob's clients (one is on node b).
	for i := 0; ; i++ {
		sender.send("touid bob probe%d", i)
		if bob1.next() == fmt.Sprintf("probe%d", i) && bob2.next() == fmt.Sprintf("probe%d", i) {
			break
		}
	}
	sender.send("touid bob hello")
	bob1.expect("hello")
	bob2.expect("hello")
	bob1.quiet()
	bob2.quiet()
	other.quiet()
	sender.quiet()

	gone := other.id
	other.conn.Close()
	sender.ask("alive "+gone, func(s string) bool { return strings.HasPrefix(s, "alive "+gone+" false") })
	other = b.connect(t)

	before := sender.stat("unknown")
	sender.send("touid nobody x")
	sender.send("toclient %s-ffffff x", gateway.ClientID(other.id).Node()+"-"+gateway.ClientID(other.id).Incarnation()) // node b's incarnation, no such connection
	other.quiet()
	if got := other.stat("unknown"); got < 1 {
		t.Errorf("node b counted %d unknown targets for a client it does not have", got)
	}
	if got := sender.stat("unknown") - before; got < 1 {
		t.Errorf("node a counted %d unknown targets for a uid no one holds", got)
	}
}

func TestGroupAcrossNodes(t *testing.T) {
	r := redistest.Start(t)
	a, b := startNode(t, r.Addr, "a"), startNode(t, r.Addr, "b")
	users := []*user{a.connect(t), b.connect(t), b.connect(t)}
	for _, u := range users {
		u.send("join room")
	}
	users[0].ask("count room", func(s string) bool { return strings.HasPrefix(s, "count room 3 ") })
	users[1].ask("count room", func(s string) bool { return strings.HasPrefix(s, "count room 3 ") })
	users[0].send("togroupx room from-a")
	users[1].expect("from-a")
	users[2].expect("from-a")
	users[0].quiet()
	users[2].send("leave room")
	users[0].ask("count room", func(s string) bool { return strings.HasPrefix(s, "count room 2 ") })
	users[1].send("togroup room from-b")
	users[0].expect("from-b")
	users[1].expect("from-b")
	users[2].quiet()
}

// TestOrderAcrossNodes: 10,000 numbered messages from one sender reach
// every receiver, on both nodes, all of them and in order.
func TestOrderAcrossNodes(t *testing.T) {
	r := redistest.Start(t)
	a, b := startNode(t, r.Addr, "a"), startNode(t, r.Addr, "b")
	sender := a.connect(t)
	receivers := []*user{a.connect(t), b.connect(t), b.connect(t)}
	for _, u := range receivers {
		u.send("join room")
	}
	sender.ask("count room", func(s string) bool { return strings.HasPrefix(s, "count room 3 ") })
	const n = 10000
	go func() {
		w := bufio.NewWriter(sender.conn)
		for i := range n {
			fmt.Fprintf(w, "togroup room %d\n", i)
			if i%100 == 99 {
				w.Flush()
				time.Sleep(time.Millisecond)
			}
		}
		w.Flush()
	}()
	for _, u := range receivers {
		for i := range n {
			if got := u.next(); got != strconv.Itoa(i) {
				t.Fatalf("client %s: message %d is %q", u.id, i, got)
			}
		}
	}
	if d := sender.stat("dropped"); d != 0 {
		t.Errorf("node a dropped %d messages", d)
	}
	if m := receivers[1].stat("missed"); m != 0 {
		t.Errorf("node b missed %d messages", m)
	}
}

// TestRedisRestart: Redis dies and comes back empty. Each node goes on
// serving its own clients meanwhile, resubscribes on its own, reports
// that something may have been lost (Resubscribes), and delivers across
// nodes what is published after, once presence is back.
func TestRedisRestart(t *testing.T) {
	r := redistest.Start(t)
	a, b := startNode(t, r.Addr, "a"), startNode(t, r.Addr, "b")
	a1, a2, b1 := a.connect(t), a.connect(t), b.connect(t)
	for _, u := range []*user{a1, a2, b1} {
		u.send("join room")
	}
	a1.ask("count room", func(s string) bool { return strings.HasPrefix(s, "count room 3 ") })
	a1.send("togroup room before")
	for _, u := range []*user{a1, a2, b1} {
		u.expect("before")
	}

	r.Stop(t)
	// Node a serves its own clients without Redis; node b does not get
	// these, and is told it may have missed something.
	for i := range 5 {
		a1.send("togroup room during%d", i)
		a1.expect(fmt.Sprintf("during%d", i))
		a2.expect(fmt.Sprintf("during%d", i))
	}
	b1.quiet()
	r.Restart(t)

	b1.ask("stats", func(s string) bool { return !strings.Contains(s, "resubscribes=0") })
	a1.ask("stats", func(s string) bool { return !strings.Contains(s, "resubscribes=0") })
	// Presence comes back with each node's refresh, at once after it
	// resubscribed.
	a1.ask("count room", func(s string) bool { return strings.HasPrefix(s, "count room 3 ") })
	a1.send("togroup room after")
	for _, u := range []*user{a1, a2, b1} {
		u.expect("after")
	}
	missed, gaps := b1.stat("missed"), b1.stat("gaps")
	dropped := a1.stat("dropped")
	// Group messages are routed by presence to node channels: the five
	// sent during the outage were numbered for no channel of b's (a's
	// lookup failed, counted as dropped, or found Redis back and empty),
	// so b sees no gap; what tells it is its resubscription (OnGap with
	// 0), asserted above.
	t.Logf("node a dropped %d publications while Redis was down; node b saw %d gap(s), %d message(s) missed, and resubscribed", dropped, gaps, missed)
}

// TestForeignMessages: what is published on the gateway's channels by
// something else is dropped and counted, and the nodes go on.
func TestForeignMessages(t *testing.T) {
	r := redistest.Start(t)
	a, b := startNode(t, r.Addr, "a"), startNode(t, r.Addr, "b")
	a1, b1 := a.connect(t), b.connect(t)
	a1.send("join room")
	b1.send("join room")
	a1.ask("count room", func(s string) bool { return strings.HasPrefix(s, "count room 2 ") })
	rdb := goredis.NewClient(&goredis.Options{Addr: r.Addr})
	defer rdb.Close()
	for _, junk := range []string{"", "hello", "HGW1", "HGW1\x03\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff", "HGW1\x09" + strings.Repeat("x", 100)} {
		rdb.Publish(context.Background(), "herd:all", junk)
		rdb.Publish(context.Background(), "herd:node:b-"+b.inc, junk) // node b's channel: its name and incarnation
	}
	b1.ask("stats", func(s string) bool { return strings.Contains(s, "malformed=10") })
	a1.send("togroup room still-fine")
	a1.expect("still-fine")
	b1.expect("still-fine")
}

// TestSessionsShared: a session written through one node is read through
// another (they share Redis), and goes when its client does.
func TestSessionsShared(t *testing.T) {
	r := redistest.Start(t)
	a := startNode(t, r.Addr, "a")
	u := a.connect(t)
	u.send("set name Ada")
	u.expect("set <nil>")
	u.send("set lang en")
	u.expect("set <nil>")
	u.send("get")
	u.expect("get lang=en,name=Ada <nil>")
	rdb := goredis.NewClient(&goredis.Options{Addr: r.Addr})
	defer rdb.Close()
	got, err := rdb.HGetAll(context.Background(), "herd:s:"+u.id).Result()
	if err != nil || got["name"] != "Ada" {
		t.Fatalf("the session in Redis: %v %v", got, err)
	}
	u.conn.Close()
	deadline := time.Now().Add(10 * time.Second)
	for rdb.Exists(context.Background(), "herd:s:"+u.id).Val() == 1 {
		if time.Now().After(deadline) {
			t.Fatal("the session outlived its client")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
