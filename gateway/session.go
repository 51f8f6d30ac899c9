//go:build linux || darwin || freebsd

package gateway

import (
	"context"
	"maps"
	"sync"
)

// A SessionStore keeps sessions by key: a client's (its ClientID, through
// the Gateway's session methods) or the application's own (a user's ID,
// so that any node can serve a returning user). The gateway's default is
// in memory; the redis module has one shared by every node.
type SessionStore interface {
	// Get returns the session, or nil if there is none.
	Get(ctx context.Context, key string) (map[string]string, error)
	// Set replaces the session.
	Set(ctx context.Context, key string, s map[string]string) error
	// Update sets the given fields, keeping the others.
	Update(ctx context.Context, key string, s map[string]string) error
	// Delete removes the session.
	Delete(ctx context.Context, key string) error
}

// MemorySessions is a SessionStore in this process's memory.
type MemorySessions struct {
	mu sync.Mutex
	m  map[string]map[string]string
}

// NewMemorySessions makes an empty store.
func NewMemorySessions() *MemorySessions {
	return &MemorySessions{m: map[string]map[string]string{}}
}

// Get implements SessionStore.
func (s *MemorySessions) Get(_ context.Context, key string) (map[string]string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return maps.Clone(s.m[key]), nil
}

// Set implements SessionStore.
func (s *MemorySessions) Set(_ context.Context, key string, v map[string]string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.m[key] = maps.Clone(v)
	return nil
}

// Update implements SessionStore.
func (s *MemorySessions) Update(_ context.Context, key string, v map[string]string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	cur := s.m[key]
	if cur == nil {
		cur = map[string]string{}
		s.m[key] = cur
	}
	maps.Copy(cur, v)
	return nil
}

// Delete implements SessionStore.
func (s *MemorySessions) Delete(_ context.Context, key string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.m, key)
	return nil
}

// Len is the number of sessions held.
func (s *MemorySessions) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.m)
}
