//go:build linux

package gateway

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/seed358e4494/herd"
	"github.com/seed358e4494/herd/internal/herdtest"
	"github.com/seed358e4494/herd/protocol"
)

// textNode is a text:// worker whose connections are gateway clients; ids
// receives each new client's ID.
type textNode struct {
	g    *Gateway
	w    *herd.Worker
	addr string
	ids  chan ClientID
}

func startTextNode(t *testing.T, g *Gateway, count int) *textNode {
	n := &textNode{g: g, ids: make(chan ClientID, 1024)}
	n.w = &herd.Worker{Addr: "text://127.0.0.1:0", Count: count, Logger: slog.New(slog.DiscardHandler)}
	clients := sync.Map{} // herd conn → ClientID
	n.w.OnConnect = func(c *herd.Conn) {
		id := g.Add(Raw(c, protocol.Text{}))
		clients.Store(c, id)
		n.ids <- id
	}
	n.w.OnClose = func(c *herd.Conn) {
		if id, ok := clients.LoadAndDelete(c); ok {
			g.Remove(id.(ClientID))
		}
	}
	if err := g.Attach(n.w); err != nil {
		t.Fatal(err)
	}
	n.addr = herdtest.Run(t, n.w)
	t.Cleanup(func() { g.Close() })
	return n
}

// lineClient is a connection that reads the lines the gateway sends.
type lineClient struct {
	id    ClientID
	conn  net.Conn
	lines chan string
}

func (n *textNode) dial(t *testing.T) *lineClient {
	c, err := net.DialTimeout("tcp", n.addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	lc := &lineClient{conn: c, lines: make(chan string, 100000)}
	select {
	case lc.id = <-n.ids:
	case <-time.After(5 * time.Second):
		t.Fatal("no OnConnect")
	}
	go func() {
		sc := bufio.NewScanner(c)
		for sc.Scan() {
			lc.lines <- sc.Text()
		}
		close(lc.lines)
	}()
	return lc
}

// expect reads the next line, which must be want.
func (lc *lineClient) expect(t *testing.T, want string) {
	t.Helper()
	select {
	case got, ok := <-lc.lines:
		if !ok || got != want {
			t.Fatalf("client %s: got %q (open %v), want %q", lc.id, got, ok, want)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("client %s: nothing within 5s, want %q", lc.id, want)
	}
}

// expectNothing checks that no line arrives for a moment.
func (lc *lineClient) expectNothing(t *testing.T) {
	t.Helper()
	select {
	case got := <-lc.lines:
		t.Fatalf("client %s: got %q, want nothing", lc.id, got)
	case <-time.After(50 * time.Millisecond):
	}
}

// sync waits until what was asked of the gateway so far is done: each
// loop runs its tasks in order, so a query posted after the changes
// answers after them.
func syncGateway(t *testing.T, g *Gateway) {
	t.Helper()
	if _, err := g.ClientIDsByGroup(context.Background(), "\x00sync"); err != nil {
		t.Fatal(err)
	}
}

func TestGatewayOneNode(t *testing.T) {
	g := &Gateway{Node: "a"}
	n := startTextNode(t, g, 2)
	ctx := context.Background()
	alice1, alice2, bob := n.dial(t), n.dial(t), n.dial(t)
	g.BindUid(alice1.id, "alice")
	g.BindUid(alice2.id, "alice")
	g.BindUid(bob.id, "bob")
	g.JoinGroup(alice1.id, "room")
	g.JoinGroup(bob.id, "room")
	syncGateway(t, g)

	g.SendToUid("alice", []byte("to alice"))
	alice1.expect(t, "to alice")
	alice2.expect(t, "to alice")
	bob.expectNothing(t)

	g.SendToGroup("room", []byte("to the room"), bob.id)
	alice1.expect(t, "to the room")
	alice2.expectNothing(t)
	bob.expectNothing(t)

	g.SendToAll([]byte("to all"))
	for _, c := range []*lineClient{alice1, alice2, bob} {
		c.expect(t, "to all")
	}
	g.SendToClient(bob.id, []byte("to bob's connection"))
	bob.expect(t, "to bob's connection")

	if on, _ := g.IsOnline(ctx, bob.id); !on {
		t.Error("bob is not online")
	}
	if on, _ := g.IsUidOnline(ctx, "carol"); on {
		t.Error("carol is online")
	}
	ids, _ := g.ClientIDsByUid(ctx, "alice")
	want := []ClientID{alice1.id, alice2.id}
	slices.Sort(want)
	if !slices.Equal(ids, want) {
		t.Errorf("alice's clients %v, want %v", ids, want)
	}
	if n, _ := g.GroupCount(ctx, "room"); n != 2 {
		t.Errorf("room has %d members, want 2", n)
	}

	if err := g.SetSession(ctx, bob.id, map[string]string{"name": "Bob"}); err != nil {
		t.Fatal(err)
	}
	g.UpdateSession(ctx, bob.id, map[string]string{"lang": "fr"})
	if s, _ := g.Session(ctx, bob.id); s["name"] != "Bob" || s["lang"] != "fr" {
		t.Errorf("session %v", s)
	}

	// Unknown targets: nothing happens, and it is counted.
	before := g.Stats().UnknownTargets
	g.SendToClient("a-ffffff", []byte("x"))
	g.SendToClient("not an id", []byte("x"))
	g.BindUid("a-ffffff", "x")
	g.LeaveGroup(bob.id, "no such group")
	syncGateway(t, g)
	if got := g.Stats().UnknownTargets - before; got != 4 {
		t.Errorf("%d unknown targets counted, want 4", got)
	}
	before = g.Stats().UnknownTargets
	g.SendToUid("nobody", []byte("x")) // no one bound: no one gets it
	g.SendToGroup("no such room", []byte("x"))
	for _, c := range []*lineClient{alice1, alice2, bob} {
		c.expectNothing(t)
	}
	if got := g.Stats().UnknownTargets - before; got != 2 {
		t.Errorf("%d unknown uid and group counted, want 2", got)
	}

	g.Ungroup("room")
	syncGateway(t, g)
	if n, _ := g.GroupCount(ctx, "room"); n != 0 {
		t.Errorf("room has %d members after Ungroup", n)
	}
	g.CloseClient(bob.id)
	select {
	case _, open := <-bob.lines:
		if open {
			t.Error("bob's connection got a line instead of closing")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("CloseClient did not close bob's connection")
	}
	bob.conn.Close()
	herdtest.WaitFor(t, "bob gone", func() bool { on, _ := g.IsOnline(ctx, bob.id); return !on })
	if s, _ := g.Session(ctx, bob.id); s != nil {
		t.Errorf("bob's session outlived him: %v", s)
	}
}

// TestGatewayChurnLeavesNothing: 10,000 cycles of bind, join, send, leave,
// unbind over connections that come and go leave no membership and no
// session behind.
func TestGatewayChurnLeavesNothing(t *testing.T) {
	g := &Gateway{Node: "a"}
	n := startTextNode(t, g, 2)
	ctx := context.Background()
	stay := n.dial(t)
	for i := range 10000 {
		uid, group := fmt.Sprintf("u%d", i%37), fmt.Sprintf("g%d", i%11)
		g.BindUid(stay.id, uid)
		g.JoinGroup(stay.id, group)
		g.SetSession(ctx, stay.id, map[string]string{"i": fmt.Sprint(i)})
		g.LeaveGroup(stay.id, group)
		g.UnbindUid(stay.id, uid)
	}
	for i := range 200 {
		c := n.dial(t)
		g.BindUid(c.id, fmt.Sprintf("short%d", i))
		g.JoinGroup(c.id, "shorts")
		g.SetSession(ctx, c.id, map[string]string{"i": "x"})
		c.conn.Close()
	}
	herdtest.WaitFor(t, "the short clients gone", func() bool { return g.Stats().Clients == 1 })
	syncGateway(t, g)
	var left []string
	gather(ctx, g, func(s *shard) []ClientID {
		for uid := range s.uids {
			left = append(left, "uid "+uid)
		}
		for group := range s.groups {
			left = append(left, "group "+group)
		}
		for _, r := range s.clients {
			if len(r.uids)+len(r.groups) > 0 {
				left = append(left, fmt.Sprintf("client %s: %v %v", r.id, r.uids, r.groups))
			}
		}
		return nil
	})
	if len(left) > 0 {
		t.Errorf("left behind: %s", strings.Join(left, "; "))
	}
	g.counts.mu.Lock()
	counted := len(g.counts.n)
	g.counts.mu.Unlock()
	if n := counted; n != 0 {
		t.Errorf("member counts left for %d uids and groups", n)
	}
	if n := g.Sessions.(*MemorySessions).Len(); n != 1 {
		t.Errorf("%d sessions, want 1 (the client that stays)", n)
	}
}

// TestGatewayScale: members of a group keep getting every message, in
// order, while Worker.Scale takes loops away and adds them back.
func TestGatewayScale(t *testing.T) {
	g := &Gateway{Node: "a"}
	n := startTextNode(t, g, 4)
	clients := make([]*lineClient, 40)
	for i := range clients {
		clients[i] = n.dial(t)
		g.JoinGroup(clients[i].id, "room")
	}
	syncGateway(t, g)
	const messages = 3000
	sent := make(chan struct{})
	go func() {
		defer close(sent)
		for i := range messages {
			g.SendToGroup("room", []byte(fmt.Sprint(i)))
			if i%100 == 0 {
				time.Sleep(time.Millisecond)
			}
		}
	}()
	for _, k := range []int{1, 3, 2, 4} {
		if err := n.w.Scale(context.Background(), k); err != nil {
			t.Fatalf("Scale(%d): %v", k, err)
		}
	}
	<-sent
	for _, c := range clients {
		var got []string
		for range messages {
			select {
			case l := <-c.lines:
				got = append(got, l)
			case <-time.After(5 * time.Second):
			}
		}
		for i, l := range got {
			if l != fmt.Sprint(i) {
				t.Fatalf("client %s: message %d is %q; the first ones: %v (of %d)", c.id, i, l, got[:min(len(got), 8)], len(got))
			}
		}
		if len(got) != messages {
			t.Fatalf("client %s: %d messages of %d", c.id, len(got), messages)
		}
	}
}

// TestSendCopiesMsg: what SendToAll was given may be overwritten as soon
// as it returns; the clients get what it held then.
func TestSendCopiesMsg(t *testing.T) {
	g := &Gateway{}
	n := startTextNode(t, g, 1)
	c := n.dial(t)
	msg := []byte("first")
	g.SendToAll(msg)
	copy(msg, "XXXXX")
	c.expect(t, "first")
}
