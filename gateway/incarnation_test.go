//go:build linux

package gateway

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/seed358e4494/herd/internal/herdtest"
)

func TestClientIDParse(t *testing.T) {
	for _, c := range []struct {
		id, node, inc string
		conn          uint64
	}{
		{"one-2k7x-1f", "one", "2k7x", 0x1f},
		{"node-1.example-z-0", "node-1.example", "z", 0},
		{"a--b-1-ff", "a--b", "1", 0xff},
		{"a-3w5e11264sgsf-1", "a", "3w5e11264sgsf", 1}, // the largest incarnation
	} {
		instance, node, conn, ok := ClientID(c.id).parse()
		if !ok || node != c.node || conn != c.conn || instance != c.node+"-"+c.inc {
			t.Errorf("%q: %q %q %x %v", c.id, instance, node, conn, ok)
		}
		if got := ClientID(c.id).Node(); got != c.node {
			t.Errorf("%q: Node %q", c.id, got)
		}
		if got := ClientID(c.id).Incarnation(); got != c.inc {
			t.Errorf("%q: Incarnation %q", c.id, got)
		}
	}
	// Before incarnations ("a-1f"), and anything but the canonical form:
	// one client, one ID.
	for _, bad := range []string{"", "a", "a-1f", "-1-1f", "a--1f", "a-1-", "a-1K-1f", "a-01-1f", "a-1-01f", "a-1-1F",
		"a-3w5e11264sgsg-1", "a-1-10000000000000000", "a-+1-1", "a-1-x y", "a-1-_1"} {
		if _, _, _, ok := ClientID(bad).parse(); ok {
			t.Errorf("%q parsed", bad)
		}
		if ClientID(bad).Node() != "" || ClientID(bad).Incarnation() != "" {
			t.Errorf("%q: node %q incarnation %q", bad, ClientID(bad).Node(), ClientID(bad).Incarnation())
		}
	}
}

// TestIncarnationsAreDrawn: 100,000 incarnations drawn, all different,
// none 0.
func TestIncarnationsAreDrawn(t *testing.T) {
	seen := map[uint64]bool{0: true}
	for range 100000 {
		n := newIncarnation()
		if seen[n] {
			t.Fatalf("incarnation %d drawn twice (or 0)", n)
		}
		seen[n] = true
	}
}

// twoIncarnations runs two gateways of node "a" (as a node restarted, or
// two processes of one name during an upgrade), each on its own worker,
// sharing a session store (as they would share Redis) and, if b is not
// nil, a broker; n clients on each.
func twoIncarnations(t *testing.T, b Broker, n int) (g1, g2 *Gateway, n1, n2 *textNode, c1, c2 []*lineClient) {
	store := NewMemorySessions()
	g1 = &Gateway{Node: "a", Sessions: store}
	g2 = &Gateway{Node: "a", Sessions: store}
	if b != nil {
		g1.Broker, g2.Broker = b, b
	}
	n1, n2 = startTextNode(t, g1, 2), startTextNode(t, g2, 2)
	<-g1.Ready()
	<-g2.Ready()
	for range n {
		c1 = append(c1, n1.dial(t))
		c2 = append(c2, n2.dial(t))
	}
	if g1.Incarnation() == g2.Incarnation() {
		t.Fatalf("two gateways drew incarnation %s", g1.Incarnation())
	}
	return
}

// TestIncarnationsNeverShareIDs: two gateways of one node name issue no
// ID twice, though their connection IDs are the same.
func TestIncarnationsNeverShareIDs(t *testing.T) {
	g1, g2, _, _, c1, c2 := twoIncarnations(t, nil, 5)
	issued := map[ClientID]bool{}
	conns := map[string]int{}
	for _, c := range append(c1, c2...) {
		if issued[c.id] {
			t.Fatalf("ID %s issued twice", c.id)
		}
		issued[c.id] = true
		conns[string(c.id[strings.LastIndexByte(string(c.id), '-')+1:])]++
		if c.id.Node() != "a" {
			t.Errorf("%s: node %q", c.id, c.id.Node())
		}
	}
	for _, c := range c1 {
		if c.id.Incarnation() != g1.Incarnation() {
			t.Errorf("%s: incarnation %q, want %q", c.id, c.id.Incarnation(), g1.Incarnation())
		}
	}
	for _, c := range c2 {
		if c.id.Incarnation() != g2.Incarnation() {
			t.Errorf("%s: incarnation %q, want %q", c.id, c.id.Incarnation(), g2.Incarnation())
		}
	}
	if conns["1"] != 2 {
		t.Fatalf("connection IDs %v: the two workers did not both issue 1, so the test tests no collision", conns)
	}
}

// TestOtherIncarnationIsUnknown: without a broker, what one gateway is
// asked to do to the clients of another of the same node name is a
// counted no-op, and touches neither its own client of the same
// connection ID nor the other's.
func TestOtherIncarnationIsUnknown(t *testing.T) {
	g1, g2, _, _, c1, c2 := twoIncarnations(t, nil, 1)
	ctx := context.Background()
	other, mine := c1[0].id, c2[0]
	before := g2.Stats().UnknownTargets
	g2.SendToClient(other, []byte("stolen"))
	g2.CloseClient(other)
	g2.BindUid(other, "u")
	g2.JoinGroup(other, "room")
	g2.Remove(other)
	if on, err := g2.IsOnline(ctx, other); on || err != nil {
		t.Errorf("IsOnline(%s) on the other incarnation: %v %v", other, on, err)
	}
	syncGateway(t, g2)
	if got := g2.Stats().UnknownTargets - before; got != 6 {
		t.Errorf("%d unknown targets counted, want 6", got)
	}
	// Nothing reached either client: the next line each gets is its own
	// gateway's, and both are still registered.
	g2.SendToClient(mine.id, []byte("mine"))
	mine.expect(t, "mine")
	g1.SendToClient(other, []byte("yours"))
	c1[0].expect(t, "yours")
	if ids, _ := g2.ClientIDsByUid(ctx, "u"); len(ids) != 0 {
		t.Errorf("uid u: %v", ids)
	}
	if n, _ := g2.GroupCount(ctx, "room"); n != 0 {
		t.Errorf("room: %d members", n)
	}
	if g2.Stats().Clients != 1 || g1.Stats().Clients != 1 {
		t.Errorf("clients: %d and %d, want 1 and 1", g1.Stats().Clients, g2.Stats().Clients)
	}
}

// TestOldIncarnationSession: a session set under one incarnation's ID
// (and one an earlier process left in the shared store, as a kill -9
// would) is not readable through any ID a second incarnation of the node
// name issues, nor through the old ID by that second one.
func TestOldIncarnationSession(t *testing.T) {
	g1, g2, _, _, c1, c2 := twoIncarnations(t, nil, 3)
	ctx := context.Background()
	old := c1[0].id
	if err := g1.SetSession(ctx, old, map[string]string{"secret": "hunter2"}); err != nil {
		t.Fatal(err)
	}
	left := ClientID("a-" + g1.Incarnation() + "-99") // a client of g1's process that died with it
	g1.Sessions.Set(ctx, string(left), map[string]string{"secret": "left behind"})

	before := g2.Stats().UnknownTargets
	for _, c := range c2 {
		if s, err := g2.Session(ctx, c.id); s != nil || err != nil {
			t.Errorf("new client %s reads session %v (%v)", c.id, s, err)
		}
	}
	for _, id := range []ClientID{old, left} {
		if s, err := g2.Session(ctx, id); s != nil || err != nil {
			t.Errorf("the other incarnation's %s: session %v (%v)", id, s, err)
		}
		if err := g2.SetSession(ctx, id, map[string]string{"secret": "mine"}); !errors.Is(err, ErrUnknownClient) {
			t.Errorf("SetSession(%s) on the other incarnation: %v", id, err)
		}
		if err := g2.UpdateSession(ctx, id, map[string]string{"x": "y"}); !errors.Is(err, ErrUnknownClient) {
			t.Errorf("UpdateSession(%s) on the other incarnation: %v", id, err)
		}
	}
	if got := g2.Stats().UnknownTargets - before; got != 6 {
		t.Errorf("%d unknown targets counted, want 6", got)
	}
	if s, _ := g1.Session(ctx, old); s["secret"] != "hunter2" {
		t.Errorf("the session through its own gateway: %v", s)
	}
	if s, _ := g1.Session(ctx, left); s != nil {
		t.Errorf("a session of a client g1 no longer has: %v", s)
	}
}

// memBroker is a Broker in this process's memory: channels, their
// subscribers, and presence sets with expiry.
type memBroker struct {
	mu   sync.Mutex
	subs map[string]map[chan Outgoing]bool
	sets map[string]map[string]time.Time
}

func newMemBroker() *memBroker {
	return &memBroker{subs: map[string]map[chan Outgoing]bool{}, sets: map[string]map[string]time.Time{}}
}

func (b *memBroker) Subscribe(ctx context.Context, channels []string, deliver func(string, []byte), subscribed func(bool)) error {
	ch := make(chan Outgoing, 1<<16)
	b.mu.Lock()
	for _, c := range channels {
		if b.subs[c] == nil {
			b.subs[c] = map[chan Outgoing]bool{}
		}
		b.subs[c][ch] = true
	}
	b.mu.Unlock()
	defer func() {
		b.mu.Lock()
		for _, c := range channels {
			delete(b.subs[c], ch)
		}
		b.mu.Unlock()
	}()
	subscribed(false)
	for {
		select {
		case m := <-ch:
			deliver(m.Channel, m.Payload)
		case <-ctx.Done():
			return nil
		}
	}
}

func (b *memBroker) Publish(_ context.Context, msgs []Outgoing) ([]int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	received := make([]int, len(msgs))
	for i, m := range msgs {
		for ch := range b.subs[m.Channel] {
			ch <- m
			received[i]++
		}
	}
	return received, nil
}

func (b *memBroker) Subscribers(_ context.Context, channels []string) ([]int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	n := make([]int, len(channels))
	for i, c := range channels {
		n[i] = len(b.subs[c])
	}
	return n, nil
}

func (b *memBroker) UpdatePresence(_ context.Context, ttl time.Duration, changes []PresenceChange) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, c := range changes {
		if b.sets[c.Key] == nil {
			b.sets[c.Key] = map[string]time.Time{}
		}
		if c.In {
			b.sets[c.Key][c.Member] = time.Now().Add(ttl)
		} else {
			delete(b.sets[c.Key], c.Member)
		}
	}
	return nil
}

func (b *memBroker) Members(_ context.Context, keys []string) ([][]string, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make([][]string, len(keys))
	for i, k := range keys {
		for m, exp := range b.sets[k] {
			if time.Now().Before(exp) {
				out[i] = append(out[i], m)
			}
		}
	}
	return out, nil
}

func (b *memBroker) IsMember(_ context.Context, key, member string) (bool, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	exp, ok := b.sets[key][member]
	return ok && time.Now().Before(exp), nil
}

// TestIncarnationsThroughBroker: two processes of node "a" and one of
// node "b" share a broker. A message to a client of either "a" reaches
// that client only, from "b" and from the other "a"; a message on one
// incarnation's channel for a client of the other is a counted no-op
// there; once the first "a" is gone (its presence entries left behind,
// as a kill leaves them), a send, a close, IsOnline and Session for its
// clients are counted no-ops on "b".
func TestIncarnationsThroughBroker(t *testing.T) {
	b := newMemBroker()
	g1, g2, _, _, c1, c2 := twoIncarnations(t, b, 1)
	gb := &Gateway{Node: "b", Broker: b, Sessions: g1.Sessions}
	startTextNode(t, gb, 1)
	<-gb.Ready()
	ctx := context.Background()
	a1, a2 := c1[0], c2[0]
	herdtest.WaitFor(t, "both clients online for b", func() bool {
		on1, _ := gb.online(ctx, a1.id)
		on2, _ := gb.online(ctx, a2.id)
		return on1 && on2
	})
	if err := g1.SetSession(ctx, a1.id, map[string]string{"secret": "hunter2"}); err != nil {
		t.Fatal(err)
	}

	gb.SendToClient(a2.id, []byte("from b"))
	a2.expect(t, "from b")
	g1.SendToClient(a2.id, []byte("from the other a"))
	a2.expect(t, "from the other a")
	g2.SendToClient(a1.id, []byte("back"))
	a1.expect(t, "back") // and nothing before it

	// A message for a1 on a2's channel: the receiver checks the
	// incarnation, not only the node name.
	before2 := g2.Stats().UnknownTargets
	forged := envelope{node: "b", epoch: 1, seq: 1, kind: kindClient, target: string(a1.id), payload: []byte("misrouted")}
	b.Publish(ctx, []Outgoing{{Channel: nodeChannel(g2.instance), Payload: forged.encode()}})
	herdtest.WaitFor(t, "the misrouted message counted", func() bool { return g2.Stats().UnknownTargets == before2+1 })
	g2.SendToClient(a2.id, []byte("marker"))
	a2.expect(t, "marker")

	// The first "a" goes; its presence stays (as after kill -9).
	g1.Close()
	herdtest.WaitFor(t, "the first a unsubscribed", func() bool {
		n, _ := b.Subscribers(ctx, []string{nodeChannel(g1.instance)})
		return n[0] == 0
	})
	if on, _ := b.IsMember(ctx, nodeKey(g1.instance), string(a1.id)); !on {
		t.Fatal("the first a's presence entry is gone: the test tests nothing")
	}
	beforeB := gb.Stats().UnknownTargets
	gb.SendToClient(a1.id, []byte("stolen"))
	gb.CloseClient(a1.id)
	if on, err := gb.IsOnline(ctx, a1.id); on || err != nil {
		t.Errorf("IsOnline(%s) after its process went: %v %v", a1.id, on, err)
	}
	if s, err := gb.Session(ctx, a1.id); s != nil || err != nil {
		t.Errorf("Session(%s) after its process went: %v %v", a1.id, s, err)
	}
	if on, err := gb.IsOnline(ctx, a2.id); !on || err != nil {
		t.Errorf("IsOnline(%s): %v %v", a2.id, on, err)
	}
	herdtest.WaitFor(t, "four unknown targets on b", func() bool { return gb.Stats().UnknownTargets >= beforeB+4 })
	gb.SendToClient(a2.id, []byte("end"))
	a2.expect(t, "end")
	syncGateway(t, gb)
	if got := gb.Stats().UnknownTargets - beforeB; got != 4 {
		t.Errorf("b counted %d unknown targets, want 4", got)
	}
	if got := g2.Stats().UnknownTargets - before2; got != 1 {
		t.Errorf("the second a counted %d unknown targets, want 1 (the misrouted message)", got)
	}
}
