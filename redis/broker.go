//go:build linux || darwin || freebsd

// Package redis connects herd gateways through Redis: a gateway.Broker
// over Redis pub/sub with presence in sorted sets, and a
// gateway.SessionStore in Redis hashes, so that several processes and
// machines serve one set of users (Workerman's Channel and
// GatewayWorker's register, in one Redis).
//
// It uses github.com/redis/go-redis/v9. On the gateway's workload
// (pipelined PUBLISH of small messages, received by a subscriber),
// github.com/redis/rueidis was 7% faster at the median, within the noise
// of the two (bench module: BenchmarkRedisClients; figures in
// bench/README.md), both bounded by redis-server. go-redis was chosen
// because its pub/sub Receive reports every (re)subscription, which is how
// a node learns it was cut off, and because it is the client most Go
// programs already use.
//
// It takes any go-redis client (goredis.UniversalClient): one server, a
// Sentinel failover client, or a Redis Cluster. On a cluster it uses
// sharded pub/sub (SSUBSCRIBE and SPUBLISH, Redis 7 and Valkey): each
// message goes to the shard that owns its channel's slot only, where
// classic PUBLISH is forwarded to every master, so pub/sub capacity grows
// with the shards. Each process's channel is hashed by its whole name,
// incarnation included (herd:{node:<node>-<incarnation>}), so the nodes'
// channels spread over the shards; herd:{all} lives on one. Presence and
// session keys are one slot each, and no command spans two keys, so they
// work on any slot layout.
//
// Keys and channels start with Prefix ("herd:" by default): channels
// herd:node:<node>-<incarnation> (one per process: see gateway.ClientID)
// and herd:all (on a cluster, with the braces above); presence sets herd:p:u:<uid>, herd:p:g:<group> and
// herd:p:n:<node>-<incarnation>, and the heartbeats herd:p:live, sorted
// sets whose scores are expiry times; sessions herd:s:<key>, hashes.
//
// What a node killed with kill -9 leaves here: its presence set and its
// clients' entries in the uid and group sets, which expire (each member
// PresenceTTL after its last refresh, each key twice that after its last
// write), and its clients' sessions, until Sessions.TTL (set one: without
// it they stay until deleted). A node started again under the same name
// is another incarnation: it never reads the old set, issues none of the
// old IDs, and so reaches none of it; the other nodes see the old
// incarnation gone at once, because Redis dropped its subscription when
// its connection closed (PUBSUB NUMSUB, and PUBLISH's count of receivers).
// A paused process keeps its subscription; the others take it for gone
// when its heartbeat, a member of herd:p:live, expires
// (gateway.LivenessTimeout).
package redis

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/seed358e4494/herd/gateway"
)

// DefaultPrefix starts every key and channel when Prefix is empty.
const DefaultPrefix = "herd:"

// Broker is a gateway.Broker on Redis.
type Broker struct {
	// Client is the Redis client: a *goredis.Client (one server, or a
	// Sentinel failover client), or a *goredis.ClusterClient, with which
	// the broker uses sharded pub/sub (SPUBLISH, SSUBSCRIBE: Redis 7 or
	// Valkey), so that pub/sub capacity grows with the shards. Its pub/sub
	// connections are its own.
	Client goredis.UniversalClient
	// Prefix starts every key and channel; empty means DefaultPrefix.
	Prefix string
}

var _ gateway.Broker = (*Broker)(nil)

func (b *Broker) prefix() string {
	if b.Prefix == "" {
		return DefaultPrefix
	}
	return b.Prefix
}

// Subscribe implements gateway.Broker. go-redis reconnects and
// resubscribes on its own; each time all the channels are subscribed
// again, subscribed(true) runs. On a cluster each channel has a sharded
// subscription (SSUBSCRIBE) of its own, to the master of its slot, which
// go-redis moves when the slot moves; deliver still runs on one
// goroutine at a time, and in the order of publication per channel (not
// across channels, which other shards carry).
func (b *Broker) Subscribe(ctx context.Context, channels []string, deliver func(string, []byte), subscribed func(again bool)) error {
	names := make([]string, len(channels))
	for i, c := range channels {
		names[i] = b.channel(c)
	}
	cc, ok := b.Client.(*goredis.ClusterClient)
	if !ok {
		return b.receive(ctx, b.Client.Subscribe(ctx, names...), "subscribe", len(names), deliver, subscribed)
	}
	var mu sync.Mutex // serializes deliver and subscribed
	confirmed := 0    // channels subscribed at least once
	var wg sync.WaitGroup
	for _, name := range names {
		wg.Add(1)
		go func() {
			defer wg.Done()
			b.receive(ctx, cc.SSubscribe(ctx, name), "ssubscribe", 1, func(c string, payload []byte) {
				mu.Lock()
				defer mu.Unlock()
				deliver(c, payload)
			}, func(again bool) {
				mu.Lock()
				defer mu.Unlock()
				switch {
				case !again:
					if confirmed++; confirmed == len(names) {
						subscribed(false)
					}
				case confirmed == len(names):
					subscribed(true)
				}
			})
		}()
	}
	wg.Wait()
	return nil
}

// receive runs one subscription (kind "subscribe" or "ssubscribe", of n
// channels) until ctx ends.
func (b *Broker) receive(ctx context.Context, ps *goredis.PubSub, kind string, n int, deliver func(string, []byte), subscribed func(again bool)) error {
	defer ps.Close()
	confirmed, rounds := 0, 0
	backoff := 10 * time.Millisecond
	for {
		msg, err := ps.Receive(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			// Redis is unreachable: the next Receive reconnects. Do not
			// spin meanwhile.
			b.failed(err)
			confirmed = 0
			select {
			case <-time.After(backoff):
			case <-ctx.Done():
				return nil
			}
			backoff = min(2*backoff, time.Second)
			continue
		}
		backoff = 10 * time.Millisecond
		switch m := msg.(type) {
		case *goredis.Subscription:
			if m.Kind != kind {
				continue
			}
			if confirmed++; confirmed == n {
				subscribed(rounds > 0)
				rounds++
			}
		case *goredis.Message:
			deliver(b.unchannel(m.Channel), []byte(m.Payload))
		}
	}
}

// Publish implements gateway.Broker: one pipeline (on a cluster, one per
// master, SPUBLISH); each message's count of receivers is PUBLISH's (or
// SPUBLISH's) answer.
func (b *Broker) Publish(ctx context.Context, msgs []gateway.Outgoing) ([]int, error) {
	_, sharded := b.Client.(*goredis.ClusterClient)
	cmds := make([]*goredis.IntCmd, len(msgs))
	_, err := b.Client.Pipelined(ctx, func(pipe goredis.Pipeliner) error {
		for i, m := range msgs {
			if sharded {
				cmds[i] = pipe.SPublish(ctx, b.channel(m.Channel), m.Payload)
			} else {
				cmds[i] = pipe.Publish(ctx, b.channel(m.Channel), m.Payload)
			}
		}
		return nil
	})
	if err != nil {
		return nil, b.failed(err)
	}
	received := make([]int, len(msgs))
	for i, c := range cmds {
		received[i] = int(c.Val())
	}
	return received, nil
}

// Subscribers implements gateway.Broker: PUBSUB NUMSUB; on a cluster,
// PUBSUB SHARDNUMSUB to the master of each channel's slot, a round trip
// per channel.
func (b *Broker) Subscribers(ctx context.Context, channels []string) ([]int, error) {
	names := make([]string, len(channels))
	for i, c := range channels {
		names[i] = b.channel(c)
	}
	if cc, ok := b.Client.(*goredis.ClusterClient); ok {
		out := make([]int, len(names))
		for i, name := range names {
			master, err := cc.MasterForKey(ctx, name)
			if err != nil {
				return nil, b.failed(err)
			}
			m, err := master.PubSubShardNumSub(ctx, name).Result()
			if err != nil {
				return nil, b.failed(err)
			}
			out[i] = int(m[name])
		}
		return out, nil
	}
	m, err := b.Client.PubSubNumSub(ctx, names...).Result()
	if err != nil {
		return nil, err
	}
	out := make([]int, len(channels))
	for i, name := range names {
		out[i] = int(m[name])
	}
	return out, nil
}

func (b *Broker) presenceKey(key string) string { return b.prefix() + "p:" + key }

// failed tells a cluster client to reload the slot map after an error:
// go-redis learns of a failover from a MOVED answer, which a master that
// is down never gives, so without this it would dial the dead master
// until its periodic reload (ClusterStateReloadInterval, a minute by
// default). go-redis runs one reload at a time. It returns err.
func (b *Broker) failed(err error) error {
	if cc, ok := b.Client.(*goredis.ClusterClient); ok && err != nil && !errors.Is(err, goredis.Nil) {
		cc.ReloadState(context.Background())
	}
	return err
}

// channel is a gateway channel's name in Redis. On a cluster the whole
// gateway channel is the hash tag ("herd:{node:one-2k7x9q0v3mzp1}"), so
// that the node channels, each named by its incarnation's random part,
// spread over the slots and so over the shards; herd:{all} is one shard's.
func (b *Broker) channel(c string) string {
	if _, ok := b.Client.(*goredis.ClusterClient); ok {
		return b.prefix() + "{" + c + "}"
	}
	return b.prefix() + c
}

// unchannel undoes channel.
func (b *Broker) unchannel(name string) string {
	c := strings.TrimPrefix(name, b.prefix())
	if _, ok := b.Client.(*goredis.ClusterClient); ok {
		c = strings.TrimSuffix(strings.TrimPrefix(c, "{"), "}")
	}
	return c
}

// UpdatePresence implements gateway.Broker: members are scored with their
// expiry time; a set whose members all stopped refreshing expires as a
// whole, and expired members are trimmed as sets are written.
func (b *Broker) UpdatePresence(ctx context.Context, ttl time.Duration, changes []gateway.PresenceChange) error {
	now := time.Now()
	expiry := float64(now.Add(ttl).UnixMilli())
	trimmed := map[string]bool{}
	_, err := b.Client.Pipelined(ctx, func(pipe goredis.Pipeliner) error {
		for _, c := range changes {
			key := b.presenceKey(c.Key)
			if !c.In {
				pipe.ZRem(ctx, key, c.Member)
				continue
			}
			pipe.ZAdd(ctx, key, goredis.Z{Score: expiry, Member: c.Member})
			if !trimmed[key] {
				trimmed[key] = true
				pipe.ZRemRangeByScore(ctx, key, "-inf", strconv.FormatInt(now.UnixMilli(), 10))
				pipe.PExpire(ctx, key, 2*ttl)
			}
		}
		return nil
	})
	return b.failed(err)
}

// Members implements gateway.Broker: one pipeline.
func (b *Broker) Members(ctx context.Context, keys []string) ([][]string, error) {
	now := "(" + strconv.FormatInt(time.Now().UnixMilli(), 10)
	cmds := make([]*goredis.StringSliceCmd, len(keys))
	_, err := b.Client.Pipelined(ctx, func(pipe goredis.Pipeliner) error {
		for i, k := range keys {
			cmds[i] = pipe.ZRangeByScore(ctx, b.presenceKey(k), &goredis.ZRangeBy{Min: now, Max: "+inf"})
		}
		return nil
	})
	if err != nil {
		return nil, b.failed(err)
	}
	out := make([][]string, len(keys))
	for i, c := range cmds {
		out[i] = c.Val()
	}
	return out, nil
}

// IsMember implements gateway.Broker.
func (b *Broker) IsMember(ctx context.Context, key, member string) (bool, error) {
	score, err := b.Client.ZScore(ctx, b.presenceKey(key), member).Result()
	if errors.Is(err, goredis.Nil) {
		return false, nil
	}
	return err == nil && score > float64(time.Now().UnixMilli()), b.failed(err)
}
