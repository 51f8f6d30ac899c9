//go:build linux

package redis_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/seed358e4494/herd/redis/redistest"
)

// TestRoutedByPresence: of three nodes, only b holds the group and the
// uid. n messages from a to each reach b's members exactly once, and
// node c receives none of them: sends to a group and to a uid go to the
// nodes that hold a member, so no node receives what it holds no member
// for (Stats.Stray 0 on every node). SendToAll still reaches every node.
func TestRoutedByPresence(t *testing.T) {
	r := redistest.Start(t)
	a, b, c := startNode(t, r.Addr, "a"), startNode(t, r.Addr, "b"), startNode(t, r.Addr, "c")
	sender, b1, b2, c1 := a.connect(t), b.connect(t), b.connect(t), c.connect(t)
	b1.send("join room")
	b2.send("join room")
	b2.send("bind bob")
	sender.ask("count room", prefix("count room 2 "))
	sender.ask("online bob", prefix("online bob true "))
	const n = 50
	for i := range n {
		sender.send("togroup room g%d", i)
		sender.send("touid bob u%d", i)
	}
	for i := range n {
		b1.expect(fmt.Sprintf("g%d", i))
		b2.expect(fmt.Sprintf("g%d", i))
		b2.expect(fmt.Sprintf("u%d", i))
	}
	sender.send("toall everyone")
	for _, u := range []*user{sender, b1, b2, c1} {
		u.expect("everyone")
	}
	c1.quiet()
	b1.quiet()
	if got := b1.stat("received"); got != 2*n+1 {
		t.Errorf("node b received %d messages, want %d (%d to the group, %d to the uid, 1 to all)", got, 2*n+1, n, n)
	}
	if got := c1.stat("received"); got != 1 {
		t.Errorf("node c, which holds no member, received %d messages, want 1 (the one to all)", got)
	}
	for _, u := range []*user{sender, b1, c1} {
		if got := u.stat("stray"); got != 0 {
			t.Errorf("node of %s received %d messages it held no member for", u.id, got)
		}
	}
}

// TestStrayCounted: with UidBroadcast every node receives every uid
// message, and the ones that do not hold the uid count each as stray
// (what TestRoutedByPresence's zero would be without routing).
func TestStrayCounted(t *testing.T) {
	r := redistest.Start(t)
	a, b, c := startNode(t, r.Addr, "a", "-uid-broadcast"), startNode(t, r.Addr, "b", "-uid-broadcast"), startNode(t, r.Addr, "c", "-uid-broadcast")
	sender, b1, c1 := a.connect(t), b.connect(t), c.connect(t)
	b1.send("bind bob")
	sender.ask("online bob", prefix("online bob true "))
	const n = 20
	for i := range n {
		sender.send("touid bob u%d", i)
	}
	for i := range n {
		b1.expect(fmt.Sprintf("u%d", i))
	}
	// c received them too (one subscriber connection per node: the
	// marker comes after them).
	sender.send("toall marker")
	c1.expect("marker")
	b1.expect("marker")
	// Counted once each of c's loops has looked (the other loop may lag
	// the one that delivered the marker).
	c1.ask("stats", func(s string) bool { return strings.Contains(s, fmt.Sprintf(" stray=%d ", n)) })
	if got := b1.stat("stray"); got != 0 {
		t.Errorf("node b, which holds bob, counted %d stray messages", got)
	}
}
