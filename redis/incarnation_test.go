//go:build linux

package redis_test

import (
	"context"
	"strconv"
	"strings"
	"testing"

	goredis "github.com/redis/go-redis/v9"

	"github.com/seed358e4494/herd/gateway"
	"github.com/seed358e4494/herd/redis/redistest"
)

func prefix(p string) func(string) bool {
	return func(s string) bool { return strings.HasPrefix(s, p) }
}

// connPart is the connection part of a client ID (after its last '-').
func connPart(id string) string { return id[strings.LastIndexByte(id, '-')+1:] }

// TestRestartedNode: node "one" is killed (SIGKILL: its client's session
// and presence stay in Redis) and started again under the same name, as
// examples/chat's README says to. Its connection IDs start again at 1,
// but no ID is issued twice; no new client reads the old client's
// session; and what another node sends to the old ID (a message, a close)
// reaches no one and is counted, as are its queries for it.
func TestRestartedNode(t *testing.T) {
	r := redistest.Start(t)
	ctx := context.Background()
	rdb := goredis.NewClient(&goredis.Options{Addr: r.Addr})
	defer rdb.Close()
	two := startNode(t, r.Addr, "two")
	one := startNode(t, r.Addr, "one")

	old := one.connect(t)
	old.send("set secret hunter2")
	old.expect("set <nil>")
	old.send("bind alice")
	old.send("join room")
	sender := two.connect(t)
	// Node two sees the old client: online, in its room, by its uid, and
	// its session.
	sender.ask("count room", prefix("count room 1 "))
	sender.ask("online alice", prefix("online alice true "))
	sender.ask("alive "+old.id, prefix("alive "+old.id+" true <nil>"))
	sender.send("session %s", old.id)
	sender.expect("session " + old.id + " secret=hunter2 <nil>")

	one.kill(t)
	// What it left behind in Redis: the session (no TTL here) and its
	// presence entries, which only expire.
	if got := rdb.HGet(ctx, "herd:s:"+old.id, "secret").Val(); got != "hunter2" {
		t.Fatalf("the old session in Redis: %q, want it left behind", got)
	}
	for _, key := range []string{"herd:p:n:one-" + one.inc, "herd:p:u:alice", "herd:p:g:room"} {
		if err := rdb.ZScore(ctx, key, old.id).Err(); err != nil {
			t.Fatalf("%s in %s: %v, want it left behind", old.id, key, err)
		}
	}

	again := startNode(t, r.Addr, "one")
	if again.inc == one.inc {
		t.Fatalf("node one started again with the same incarnation %s", one.inc)
	}
	issued := map[string]bool{old.id: true}
	var fresh []*user
	for range 3 {
		u := again.connect(t)
		if issued[u.id] {
			t.Fatalf("ID %s issued twice", u.id)
		}
		issued[u.id] = true
		if node := gateway.ClientID(u.id).Node(); node != "one" {
			t.Fatalf("ID %s: node %q", u.id, node)
		}
		u.send("get")
		u.expect("get  <nil>")
		u.send("session %s", old.id) // the restarted node does not serve the old ID's session either
		u.expect("session " + old.id + "  <nil>")
		fresh = append(fresh, u)
	}
	// The case of the finding: the connection parts collide.
	if connPart(fresh[0].id) != connPart(old.id) {
		t.Fatalf("the first new client %s does not reuse the old one's connection ID (%s): the test does not test the collision", fresh[0].id, old.id)
	}

	before := sender.stat("unknown")
	sender.send("toclient %s stolen", old.id)
	sender.send("close %s", old.id)
	sender.send("touid alice private")
	sender.send("alive %s", old.id)
	sender.expect("alive " + old.id + " false <nil>")
	sender.send("session %s", old.id)
	sender.expect("session " + old.id + "  <nil>")
	sender.send("count room")
	sender.expect("count room 0 <nil>")
	sender.send("online alice")
	sender.expect("online alice false <nil>")
	// Published after the message and the close to the old ID, on the
	// same connection to Redis: had either reached a new client, it would
	// come (or close the connection) before its marker.
	for _, u := range fresh {
		sender.send("toclient %s marker", u.id)
		u.expect("marker")
	}
	// Five no-ops on node two: the message, the close and the message to
	// the uid reached no subscriber; IsOnline and Session found no client.
	got := sender.ask("stats", func(s string) bool { return strings.Contains(s, " unknown="+strconv.Itoa(before+5)+" ") })
	t.Logf("node two: %s", got)
	// The restarted node received the three markers and nothing else,
	// and counted its clients' three Session calls for the old ID.
	if n := fresh[0].stat("received"); n != 3 {
		t.Errorf("the restarted node received %d messages, want 3 (the markers)", n)
	}
	if n := fresh[0].stat("unknown"); n != 3 {
		t.Errorf("the restarted node counted %d unknown targets, want 3", n)
	}
	if n := sender.stat("unknown"); n != before+5 {
		t.Errorf("node two counted %d unknown targets, want %d", n, before+5)
	}
}

// TestSameNameSideBySide: two processes run under one node name at once,
// as during a binary upgrade. Their IDs differ, and a message to one's
// client, by ID, group or uid, reaches that client only, wherever it is
// sent from.
func TestSameNameSideBySide(t *testing.T) {
	r := redistest.Start(t)
	a, b := startNode(t, r.Addr, "one"), startNode(t, r.Addr, "one")
	if a.inc == b.inc {
		t.Fatalf("two processes drew the same incarnation %s", a.inc)
	}
	a1, b1 := a.connect(t), b.connect(t)
	if a1.id == b1.id {
		t.Fatalf("both processes issued %s", a1.id)
	}
	if connPart(a1.id) != connPart(b1.id) {
		t.Fatalf("%s and %s: not the same connection ID, the test does not test the collision", a1.id, b1.id)
	}
	for _, id := range []string{a1.id, b1.id} {
		if node := gateway.ClientID(id).Node(); node != "one" {
			t.Fatalf("ID %s: node %q", id, node)
		}
	}
	a1.send("join room")
	b1.send("join room")
	b1.send("bind bob")
	// b's presence is written off its loop; each "not yet" a answers
	// counts an unknown target there.
	a1.ask("alive "+b1.id, prefix("alive "+b1.id+" true <nil>"))
	beforeA, beforeB := a1.stat("unknown"), b1.stat("unknown")

	a1.send("toclient %s for-b", b1.id)
	b1.expect("for-b")
	b1.send("toclient %s for-a", a1.id)
	a1.expect("for-a") // and not for-b before it
	a1.ask("count room", prefix("count room 2 "))
	a1.send("togroupx room to-the-room")
	b1.expect("to-the-room")
	a1.ask("online bob", prefix("online bob true "))
	a1.send("touid bob to-bob")
	b1.expect("to-bob")
	b1.send("toclient %s end", a1.id)
	a1.expect("end") // nothing else came to a1
	a1.send("toclient %s end", b1.id)
	b1.expect("end")

	// Exact counts: nothing was unknown, and each process received what
	// the other sent to its client.
	if n := a1.stat("unknown") - beforeA; n != 0 {
		t.Errorf("process a counted %d unknown targets", n)
	}
	if n := b1.stat("unknown") - beforeB; n != 0 {
		t.Errorf("process b counted %d unknown targets", n)
	}
	if n := a1.stat("received"); n != 2 {
		t.Errorf("process a received %d messages, want 2", n)
	}
	if n := b1.stat("received"); n != 4 {
		t.Errorf("process b received %d messages, want 4", n)
	}
}
