//go:build linux

package gateway

import (
	"context"
	"slices"
	"testing"
	"time"
)

// TestHeartbeat: a gateway with a broker is in the live set before it is
// Ready, with LivenessTimeout to live, and leaves it at Close, so that
// the others route nothing more to it from then on, not from
// LivenessTimeout later.
func TestHeartbeat(t *testing.T) {
	b := newMemBroker()
	g := &Gateway{Node: "a", Broker: b}
	startTextNode(t, g, 1)
	<-g.Ready()
	live, _ := b.Members(context.Background(), []string{liveKey})
	if !slices.Equal(live[0], []string{g.instance}) {
		t.Fatalf("live set %v at Ready, want [%s]", live[0], g.instance)
	}
	b.mu.Lock()
	left := time.Until(b.sets[liveKey][g.instance])
	b.mu.Unlock()
	if left <= LivenessTimeout-LivenessTimeout/3 || left > LivenessTimeout {
		t.Errorf("the heartbeat expires in %v, want within LivenessTimeout (%v) and renewed every third of it", left, LivenessTimeout)
	}
	if err := g.Close(); err != nil {
		t.Fatal(err)
	}
	live, _ = b.Members(context.Background(), []string{liveKey})
	if len(live[0]) != 0 {
		t.Errorf("live set %v after Close, want empty", live[0])
	}
}
