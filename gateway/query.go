//go:build linux || darwin || freebsd

package gateway

import (
	"context"
	"sort"
	"sync"
)

// IsOnline reports whether the client is connected, on any node.
func (g *Gateway) IsOnline(ctx context.Context, id ClientID) (bool, error) {
	node, conn, ok := id.split()
	switch {
	case !ok:
		return false, nil
	case node == g.node:
		_, ok := g.where.Load(conn)
		return ok, nil
	case g.Broker == nil:
		return false, nil
	}
	return g.Broker.IsMember(ctx, nodeKey(node), string(id))
}

// IsUidOnline reports whether a client bound to uid is connected, on any
// node.
func (g *Gateway) IsUidOnline(ctx context.Context, uid string) (bool, error) {
	ids, err := g.ClientIDsByUid(ctx, uid)
	return len(ids) > 0, err
}

// ClientIDsByUid lists the clients bound to uid, on every node, sorted.
func (g *Gateway) ClientIDsByUid(ctx context.Context, uid string) ([]ClientID, error) {
	return g.members(ctx, uidKey(uid), func(s *shard) []ClientID { return ids(s.uids[uid]) })
}

// ClientIDsByGroup lists the members of group, on every node, sorted.
func (g *Gateway) ClientIDsByGroup(ctx context.Context, group string) ([]ClientID, error) {
	return g.members(ctx, groupKey(group), func(s *shard) []ClientID { return ids(s.groups[group]) })
}

// GroupCount is the number of members of group, on every node.
func (g *Gateway) GroupCount(ctx context.Context, group string) (int, error) {
	m, err := g.ClientIDsByGroup(ctx, group)
	return len(m), err
}

func ids(set map[uint64]*record) []ClientID {
	out := make([]ClientID, 0, len(set))
	for _, r := range set {
		out = append(out, r.id)
	}
	return out
}

// members gathers a set's members: this node's from its loops (the truth
// of the moment), the other nodes' from the broker's presence set.
func (g *Gateway) members(ctx context.Context, key string, local func(*shard) []ClientID) ([]ClientID, error) {
	out, err := gather(ctx, g, local)
	if err != nil || g.Broker == nil {
		return sorted(out), err
	}
	remote, err := g.Broker.Members(ctx, []string{key})
	if err != nil {
		return sorted(out), err
	}
	for _, m := range remote[0] {
		if id := ClientID(m); id.Node() != g.node {
			out = append(out, id)
		}
	}
	return sorted(out), nil
}

func sorted(ids []ClientID) []ClientID {
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	return ids
}

// gather runs f on every loop's shard and joins the results; it waits at
// most until ctx ends, and never blocks a loop.
func gather[T any](ctx context.Context, g *Gateway, f func(*shard) []T) ([]T, error) {
	var mu sync.Mutex
	var out []T
	var wg sync.WaitGroup
	for _, s := range g.currentView().shards {
		wg.Add(1)
		if !s.loop.Post(func() {
			defer wg.Done()
			got := f(s)
			mu.Lock()
			out = append(out, got...)
			mu.Unlock()
		}) {
			wg.Done()
		}
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
		mu.Lock()
		defer mu.Unlock()
		return out, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// SetSession replaces the client's session.
func (g *Gateway) SetSession(ctx context.Context, id ClientID, s map[string]string) error {
	return g.Sessions.Set(ctx, string(id), s)
}

// UpdateSession sets the given fields of the client's session, keeping
// the others.
func (g *Gateway) UpdateSession(ctx context.Context, id ClientID, s map[string]string) error {
	return g.Sessions.Update(ctx, string(id), s)
}

// Session returns the client's session (nil if it has none).
func (g *Gateway) Session(ctx context.Context, id ClientID) (map[string]string, error) {
	return g.Sessions.Get(ctx, string(id))
}
