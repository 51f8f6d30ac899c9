//go:build linux

package redis_test

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	herdredis "github.com/seed358e4494/herd/redis"
	"github.com/seed358e4494/herd/redis/redistest"
)

// TestCluster: three nodes on a local 3-master Redis Cluster. Sends by
// group, uid, client and to all work across nodes as on one server, over
// sharded pub/sub only (no classic channel on any master; each node
// channel on the master of its slot), routed by presence (node c, which
// holds no member, receives only the message to all); a node killed is
// gone at once (PUBSUB SHARDNUMSUB).
func TestCluster(t *testing.T) {
	cl := redistest.StartCluster(t, 3, 0)
	addrs := strings.Join(cl.Addrs, ",")
	a, b, c := startNode(t, addrs, "a", "-cluster"), startNode(t, addrs, "b", "-cluster"), startNode(t, addrs, "c", "-cluster")
	sender, b1, b2, c1 := a.connect(t), b.connect(t), b.connect(t), c.connect(t)
	b1.send("join room")
	b2.send("join room")
	b2.send("bind bob")
	b1.send("set name Ada")
	b1.expect("set <nil>")
	sender.ask("count room", prefix("count room 2 "))
	sender.ask("online bob", prefix("online bob true "))
	sender.send("session %s", b1.id)
	sender.expect("session " + b1.id + " name=Ada <nil>")
	const n = 20
	for i := range n {
		sender.send("togroup room g%d", i)
		sender.send("touid bob u%d", i)
		sender.send("toclient %s c%d", b1.id, i)
	}
	for i := range n {
		b1.expect(fmt.Sprintf("g%d", i))
		b1.expect(fmt.Sprintf("c%d", i))
		b2.expect(fmt.Sprintf("g%d", i))
		b2.expect(fmt.Sprintf("u%d", i))
	}
	sender.send("toall everyone")
	for _, u := range []*user{sender, b1, b2, c1} {
		u.expect("everyone")
	}
	if got := b1.stat("received"); got != 3*n+1 {
		t.Errorf("node b received %d messages, want %d", got, 3*n+1)
	}
	if got := c1.stat("received"); got != 1 {
		t.Errorf("node c received %d messages, want 1 (the one to all)", got)
	}
	for _, u := range []*user{sender, b1, c1} {
		if s := u.stat("stray"); s != 0 {
			t.Errorf("node of %s: %d stray messages", u.id, s)
		}
	}

	// Sharded pub/sub only: no classic channel anywhere, and the shard
	// channels are the three node channels and all, each on one master.
	ctx := context.Background()
	var shard []string
	for _, addr := range cl.Addrs {
		m := goredis.NewClient(&goredis.Options{Addr: addr})
		defer m.Close()
		if classic := m.PubSubChannels(ctx, "*").Val(); len(classic) != 0 {
			t.Errorf("master %s has classic channels %v", addr, classic)
		}
		shard = append(shard, m.PubSubShardChannels(ctx, "*").Val()...)
	}
	slices.Sort(shard)
	want := []string{"herd:{all}", "herd:{node:a-" + a.inc + "}", "herd:{node:b-" + b.inc + "}", "herd:{node:c-" + c.inc + "}"}
	slices.Sort(want)
	if !slices.Equal(shard, want) {
		t.Errorf("shard channels %v, want %v", shard, want)
	}

	b.kill(t)
	sender.send("alive %s", b1.id)
	sender.expect("alive " + b1.id + " false <nil>")
	before := sender.stat("unknown")
	sender.send("touid bob lost")
	sender.ask("stats", func(s string) bool { return strings.Contains(s, " unknown="+strconv.Itoa(before+1)+" ") })
}

// TestClusterChannelsSpread: node channels are hashed by their whole
// name, incarnation included, so that 90 nodes' channels land on every
// master of a 3-master cluster (each gets about 30; none is left out with
// probability 3·(2/3)^90, about 4e-16).
func TestClusterChannelsSpread(t *testing.T) {
	cl := redistest.StartCluster(t, 3, 0)
	cc := goredis.NewClusterClient(&goredis.ClusterOptions{Addrs: cl.Addrs})
	defer cc.Close()
	b := &herdredis.Broker{Client: cc}
	ctx := context.Background()
	per := map[string]int{}
	for i := range 90 {
		name := b.Channel(fmt.Sprintf("node:one-%s", strconv.FormatUint(uint64(i)*0x9e3779b97f4a7c15, 36)))
		m, err := cc.MasterForKey(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		per[m.Options().Addr]++
	}
	t.Logf("node channels per master: %v", per)
	if len(per) != 3 {
		t.Errorf("90 node channels on %d masters, want all 3: %v", len(per), per)
	}
}

// TestClusterFailover: on a cluster of three masters with a replica each,
// the master that carries node b's channel is killed. Its replica takes
// over; node b resubscribes on its own (counted); node a's messages to
// b's client, one every 20 ms, arrive again; and each one that did not
// arrive is counted somewhere: dropped or unknown on a, missed on b.
// None arrives twice or out of order.
func TestClusterFailover(t *testing.T) {
	cl := redistest.StartCluster(t, 3, 1)
	addrs := strings.Join(cl.Addrs, ",")
	a, b := startNode(t, addrs, "a", "-cluster"), startNode(t, addrs, "b", "-cluster")
	sender, b1 := a.connect(t), b.connect(t)
	sender.ask("alive "+b1.id, prefix("alive "+b1.id+" true "))

	cc := goredis.NewClusterClient(&goredis.ClusterOptions{Addrs: cl.Addrs})
	defer cc.Close()
	ctx := context.Background()
	channel := (&herdredis.Broker{Client: cc}).Channel("node:b-" + b.inc)
	master, err := cc.MasterForKey(ctx, channel)
	if err != nil {
		t.Fatal(err)
	}
	sender.send("toclient %s m0", b1.id)
	b1.expect("m0")

	cl.Kill(t, master.Options().Addr)
	killed := time.Now()
	// Send until b's client receives again, and 10 more.
	received, last, sent := 1, 0, 1
	after := -1
	for deadline := time.Now().Add(30 * time.Second); after < 0 || sent < after+10; sent++ {
		if time.Now().After(deadline) {
			t.Fatalf("no message reached b's client within 30s of the kill (%d sent)", sent)
		}
		sender.send("toclient %s m%d", b1.id, sent)
		time.Sleep(20 * time.Millisecond)
		for drained := false; !drained; {
			select {
			case l := <-b1.lines:
				i, err := strconv.Atoi(strings.TrimPrefix(l, "m"))
				if err != nil || i <= last {
					t.Fatalf("b's client got %q after m%d", l, last)
				}
				last = i
				received++
				if after < 0 {
					after = sent
				}
			default:
				drained = true
			}
		}
	}
	// The last ones arrive (nothing is in the way any more).
	for last < sent-1 {
		l := b1.next()
		i, err := strconv.Atoi(strings.TrimPrefix(l, "m"))
		if err != nil || i <= last {
			t.Fatalf("b's client got %q after m%d", l, last)
		}
		last = i
		received++
	}
	lost := sent - received
	dropped, unknown := sender.stat("dropped"), sender.stat("unknown")
	missed, resub := b1.stat("missed"), b1.stat("resubscribes")
	t.Logf("%d sent, %d received, %d lost; node a: %d dropped, %d unknown; node b: %d missed, %d resubscriptions; back %v after the kill",
		sent, received, lost, dropped, unknown, missed, resub, time.Since(killed).Round(time.Millisecond))
	if resub < 1 {
		t.Errorf("node b counted %d resubscriptions, want at least 1", resub)
	}
	if lost > dropped+unknown+missed {
		t.Errorf("%d messages lost, %d counted (dropped %d, unknown %d, missed %d)", lost, dropped+unknown+missed, dropped, unknown, missed)
	}
}
