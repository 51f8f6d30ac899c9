package poll

import (
	"sync"
	"testing"
	"time"

	"github.com/seed358e4494/herd/internal/soak"
)

// TestWakeNeverLost hammers Wake from two goroutines while the owner waits,
// then checks one more Wake still ends a Wait: the pending flag must never
// stay set with the wake-up already consumed.
func TestWakeNeverLost(t *testing.T) {
	rounds := 200
	if !soak.Enabled() {
		rounds = 20
	}
	for round := 0; round < rounds; round++ {
		p, err := New(8)
		if err != nil {
			t.Fatal(err)
		}
		stop := make(chan struct{})
		woke := make(chan struct{}, 1)
		exited := make(chan struct{})
		go func() {
			defer close(exited)
			var ev []Event
			for {
				ev, _ = p.Wait(-1, ev)
				select {
				case woke <- struct{}{}:
				default:
				}
				select {
				case <-stop:
					return
				default:
				}
			}
		}()
		var wg sync.WaitGroup
		for g := 0; g < 2; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < 2000; i++ {
					p.Wake()
				}
			}()
		}
		wg.Wait()
		time.Sleep(2 * time.Millisecond)
		for len(woke) > 0 {
			<-woke
		}
		close(stop)
		p.Wake()
		select {
		case <-woke:
		case <-time.After(5 * time.Second):
			t.Fatalf("round %d: Wake lost: the poller's pending flag is stuck", round)
		}
		<-exited
		p.Close()
	}
}
