//go:build linux || darwin || freebsd

package redis

import (
	"context"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/seed358e4494/herd/gateway"
)

// Sessions is a gateway.SessionStore in Redis hashes, shared by every node:
// a client that comes back through another node finds its session there.
type Sessions struct {
	// Client is the Redis client: one server, Sentinel or Cluster (each
	// session is one key).
	Client goredis.UniversalClient
	// Prefix starts every key; empty means DefaultPrefix.
	Prefix string
	// TTL, if set, makes a session expire that long after it was last
	// written.
	TTL time.Duration
}

var _ gateway.SessionStore = (*Sessions)(nil)

func (s *Sessions) key(k string) string {
	p := s.Prefix
	if p == "" {
		p = DefaultPrefix
	}
	return p + "s:" + k
}

// Get implements gateway.SessionStore.
func (s *Sessions) Get(ctx context.Context, key string) (map[string]string, error) {
	m, err := s.Client.HGetAll(ctx, s.key(key)).Result()
	if err != nil || len(m) == 0 {
		return nil, err
	}
	return m, nil
}

// Set implements gateway.SessionStore: the old fields go, in one
// transaction with the new ones.
func (s *Sessions) Set(ctx context.Context, key string, v map[string]string) error {
	k := s.key(key)
	_, err := s.Client.TxPipelined(ctx, func(pipe goredis.Pipeliner) error {
		pipe.Del(ctx, k)
		s.write(ctx, pipe, k, v)
		return nil
	})
	return err
}

// Update implements gateway.SessionStore.
func (s *Sessions) Update(ctx context.Context, key string, v map[string]string) error {
	k := s.key(key)
	_, err := s.Client.TxPipelined(ctx, func(pipe goredis.Pipeliner) error {
		s.write(ctx, pipe, k, v)
		return nil
	})
	return err
}

func (s *Sessions) write(ctx context.Context, pipe goredis.Pipeliner, k string, v map[string]string) {
	if len(v) > 0 {
		pipe.HSet(ctx, k, v)
	}
	if s.TTL > 0 {
		pipe.PExpire(ctx, k, s.TTL)
	}
}

// Delete implements gateway.SessionStore.
func (s *Sessions) Delete(ctx context.Context, key string) error {
	return s.Client.Del(ctx, s.key(key)).Err()
}
