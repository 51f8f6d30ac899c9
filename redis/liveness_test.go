//go:build linux

package redis_test

import (
	"context"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/seed358e4494/herd/gateway"
	"github.com/seed358e4494/herd/redis/redistest"
)

// TestPausedNode: node b is paused (SIGSTOP; it stays subscribed, so
// only its silence tells). Node a takes it for gone within
// LivenessTimeout and a little: its user offline, its room empty, sends
// to its client and uid counted no-ops, not published. Continued
// (SIGCONT), b heartbeats again, counts that it was suspended, and its
// client is back: it receives what is sent after, and nothing twice nor
// anything sent while it was gone.
func TestPausedNode(t *testing.T) {
	r := redistest.Start(t)
	a, b := startNode(t, r.Addr, "a"), startNode(t, r.Addr, "b")
	sender, b1 := a.connect(t), b.connect(t)
	b1.send("bind alice")
	b1.send("join room")
	sender.ask("online alice", prefix("online alice true "))
	sender.ask("count room", prefix("count room 1 "))
	sender.send("touid alice before")
	b1.expect("before")

	if err := b.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	stopped := time.Now()
	sender.ask("alive "+b1.id, prefix("alive "+b1.id+" false "))
	gone := time.Since(stopped)
	// The bound: its last heartbeat's expiry (LivenessTimeout after it)
	// plus a heartbeat interval of slack for a loaded machine.
	if bound := gateway.LivenessTimeout + gateway.LivenessTimeout/3; gone > bound {
		t.Errorf("the paused node was taken for gone after %v, want within %v", gone, bound)
	}
	sender.ask("online alice", prefix("online alice false "))
	sender.ask("count room", prefix("count room 0 "))
	before := sender.stat("unknown")
	published := sender.stat("published")
	const n = 5
	for i := range n {
		sender.send("touid alice lost%d", i)
		sender.send("toclient %s lost%d", b1.id, i)
		sender.send("togroup room lost%d", i)
	}
	// Each uid and client send is a counted no-op; nothing is published
	// to the paused node.
	sender.ask("stats", func(s string) bool { return strings.Contains(s, fmt.Sprintf(" unknown=%d ", before+2*n)) })
	if got := sender.stat("published"); got != published {
		t.Errorf("node a published %d messages to a node it took for gone", got-published)
	}

	// As if the pause had outlasted PresenceTTL: b's presence entries
	// are gone.
	rdb := goredis.NewClient(&goredis.Options{Addr: r.Addr})
	defer rdb.Close()
	if n, err := rdb.Del(context.Background(), "herd:p:u:alice", "herd:p:g:room", "herd:p:n:b-"+b.inc).Result(); n != 3 || err != nil {
		t.Fatalf("deleting b's presence: %d keys, %v", n, err)
	}

	if err := b.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	continued := time.Now()
	sender.ask("alive "+b1.id, prefix("alive "+b1.id+" true "))
	live := time.Since(continued)
	sender.ask("online alice", prefix("online alice true "))
	sender.ask("count room", prefix("count room 1 "))
	back := time.Since(continued)
	t.Logf("taken for gone %v after SIGSTOP; after SIGCONT live again in %v, presence back in %v", gone.Round(time.Millisecond), live.Round(time.Millisecond), back.Round(time.Millisecond))
	// Live at its next heartbeat (a third of LivenessTimeout), its
	// presence written at once, not at the periodic refresh (a third of
	// PresenceTTL); a second of slack for a loaded machine.
	if bound := gateway.LivenessTimeout/3 + time.Second; live > bound {
		t.Errorf("live again %v after SIGCONT, want within %v", live, bound)
	}
	if bound := gateway.LivenessTimeout/3 + time.Second; back > bound {
		t.Errorf("presence back %v after SIGCONT, want within %v", back, bound)
	}
	sender.send("touid alice after")
	b1.expect("after") // no lost message, no second "before"
	sender.send("togroup room after-group")
	b1.expect("after-group")
	sender.send("toclient %s after-client", b1.id)
	b1.expect("after-client")
	b1.quiet()
	if got := b1.stat("received"); got != 4 {
		t.Errorf("node b received %d messages, want 4 (before, and three after)", got)
	}
	b1.ask("stats", func(s string) bool { return strings.HasSuffix(s, " suspended=1") })
	if got := b1.stat("stray"); got != 0 {
		t.Errorf("node b counted %d stray messages", got)
	}
}
