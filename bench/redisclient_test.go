//go:build linux

package bench

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"
	"github.com/redis/rueidis"

	"github.com/seed358e4494/herd/redis/redistest"
)

// BenchmarkRedisClients is how the redis module chose its client: the
// gateway's workload (batches of 256 PUBLISHes of 100 bytes, pipelined,
// received by one subscriber) with go-redis and with rueidis against the
// same redis-server. One op is one message published and received.
//
//	go test -run '^$' -bench RedisClients -count 5
func BenchmarkRedisClients(b *testing.B) {
	r := redistest.Start(b)
	payload := make([]byte, 100)
	const batch = 256

	b.Run("go-redis", func(b *testing.B) {
		ctx := context.Background()
		c := goredis.NewClient(&goredis.Options{Addr: r.Addr})
		defer c.Close()
		sub := c.Subscribe(ctx, "bench")
		defer sub.Close()
		if _, err := sub.Receive(ctx); err != nil {
			b.Fatal(err)
		}
		var got atomic.Int64
		go func() {
			for range sub.Channel(goredis.WithChannelSize(1 << 16)) {
				got.Add(1)
			}
		}()
		b.ResetTimer()
		for i := 0; i < b.N; i += batch {
			n := min(batch, b.N-i)
			if _, err := c.Pipelined(ctx, func(p goredis.Pipeliner) error {
				for range n {
					p.Publish(ctx, "bench", payload)
				}
				return nil
			}); err != nil {
				b.Fatal(err)
			}
		}
		waitCount(b, &got, int64(b.N))
	})

	b.Run("rueidis", func(b *testing.B) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		c, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{r.Addr}, DisableCache: true})
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		var got atomic.Int64
		subscribed := make(chan struct{})
		go c.Receive(rueidis.WithOnSubscriptionHook(ctx, func(rueidis.PubSubSubscription) { close(subscribed) }),
			c.B().Subscribe().Channel("bench").Build(), func(rueidis.PubSubMessage) { got.Add(1) })
		<-subscribed
		b.ResetTimer()
		for i := 0; i < b.N; i += batch {
			n := min(batch, b.N-i)
			cmds := make(rueidis.Commands, 0, n)
			for range n {
				cmds = append(cmds, c.B().Publish().Channel("bench").Message(rueidis.BinaryString(payload)).Build())
			}
			for _, res := range c.DoMulti(ctx, cmds...) {
				if err := res.Error(); err != nil {
					b.Fatal(err)
				}
			}
		}
		waitCount(b, &got, int64(b.N))
	})
}

// waitCount waits until n messages were received.
func waitCount(b *testing.B, got *atomic.Int64, n int64) {
	for deadline := time.Now().Add(30 * time.Second); got.Load() < n; time.Sleep(50 * time.Microsecond) {
		if time.Now().After(deadline) {
			b.Fatalf("%d of %d messages received", got.Load(), n)
		}
	}
}
