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
// Keys and channels start with Prefix ("herd:" by default): channels
// herd:node:<node>-<incarnation> (one per process: see gateway.ClientID)
// and herd:all; presence sets herd:p:u:<uid>, herd:p:g:<group> and
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
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/seed358e4494/herd/gateway"
)

// DefaultPrefix starts every key and channel when Prefix is empty.
const DefaultPrefix = "herd:"

// Broker is a gateway.Broker on Redis.
type Broker struct {
	// Client is the Redis client. Its pub/sub connection is its own.
	Client *goredis.Client
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
// again, subscribed(true) runs.
func (b *Broker) Subscribe(ctx context.Context, channels []string, deliver func(string, []byte), subscribed func(again bool)) error {
	p := b.prefix()
	names := make([]string, len(channels))
	for i, c := range channels {
		names[i] = p + c
	}
	ps := b.Client.Subscribe(ctx, names...)
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
			if m.Kind != "subscribe" {
				continue
			}
			if confirmed++; confirmed == len(names) {
				subscribed(rounds > 0)
				rounds++
			}
		case *goredis.Message:
			deliver(strings.TrimPrefix(m.Channel, p), []byte(m.Payload))
		}
	}
}

// Publish implements gateway.Broker: one pipeline; each message's count
// of receivers is PUBLISH's answer.
func (b *Broker) Publish(ctx context.Context, msgs []gateway.Outgoing) ([]int, error) {
	p := b.prefix()
	cmds := make([]*goredis.IntCmd, len(msgs))
	_, err := b.Client.Pipelined(ctx, func(pipe goredis.Pipeliner) error {
		for i, m := range msgs {
			cmds[i] = pipe.Publish(ctx, p+m.Channel, m.Payload)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	received := make([]int, len(msgs))
	for i, c := range cmds {
		received[i] = int(c.Val())
	}
	return received, nil
}

// Subscribers implements gateway.Broker: PUBSUB NUMSUB.
func (b *Broker) Subscribers(ctx context.Context, channels []string) ([]int, error) {
	p := b.prefix()
	names := make([]string, len(channels))
	for i, c := range channels {
		names[i] = p + c
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
	return err
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
		return nil, err
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
	return err == nil && score > float64(time.Now().UnixMilli()), err
}
