//go:build linux || darwin || freebsd

package gateway

import (
	"context"
	"errors"
	"slices"
	"sort"
	"sync"
)

// IsOnline reports whether the client is connected, on any node: in its
// process's presence set, and that process (that incarnation of its node)
// still live. A client not found is counted as an unknown target.
func (g *Gateway) IsOnline(ctx context.Context, id ClientID) (bool, error) {
	on, err := g.online(ctx, id)
	if err == nil && !on {
		g.stats.unknown.Add(1)
	}
	return on, err
}

// online is IsOnline without the count.
func (g *Gateway) online(ctx context.Context, id ClientID) (bool, error) {
	instance, _, conn, ok := id.parse()
	switch {
	case !ok:
		return false, nil
	case instance == g.instance:
		_, ok := g.where.Load(conn)
		return ok, nil
	case g.Broker == nil:
		return false, nil
	}
	on, err := g.Broker.IsMember(ctx, nodeKey(instance), string(id))
	if !on || err != nil {
		return false, err
	}
	// A process that was killed is still in the presence sets until its
	// entries expire; it is no longer subscribed.
	live, err := g.live(ctx, []string{instance})
	return live[instance], err
}

// live tells which of the given instances ("<node>-<incarnation>") are
// live: subscribed to their channels (a killed process is not, at once)
// and heartbeating (a paused one is not, within LivenessTimeout). Two
// round trips.
func (g *Gateway) live(ctx context.Context, instances []string) (map[string]bool, error) {
	channels := make([]string, len(instances))
	for i, inst := range instances {
		channels[i] = nodeChannel(inst)
	}
	n, err := g.Broker.Subscribers(ctx, channels)
	if err != nil {
		return nil, err
	}
	if len(n) != len(instances) {
		return nil, errors.New("gateway: the broker's Subscribers answered for another number of channels")
	}
	beating, err := g.Broker.Members(ctx, []string{liveKey})
	if err != nil {
		return nil, err
	}
	if len(beating) != 1 {
		return nil, errors.New("gateway: the broker's Members answered for another number of keys")
	}
	live := make(map[string]bool, len(instances))
	for i, inst := range instances {
		live[inst] = n[i] > 0 && slices.Contains(beating[0], inst)
	}
	return live, nil
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

// members gathers a set's members: this process's from its loops (the
// truth of the moment), the other processes' from the broker's presence
// set, less those of processes no longer live (killed: their entries
// stay until they expire).
func (g *Gateway) members(ctx context.Context, key string, local func(*shard) []ClientID) ([]ClientID, error) {
	out, err := gather(ctx, g, local)
	if err != nil || g.Broker == nil {
		return sorted(out), err
	}
	remote, err := g.Broker.Members(ctx, []string{key})
	if err != nil {
		return sorted(out), err
	}
	var ids []ClientID
	var instances []string
	for _, m := range remote[0] {
		id := ClientID(m)
		if inst := id.instance(); inst != "" && inst != g.instance {
			ids = append(ids, id)
			if !slices.Contains(instances, inst) {
				instances = append(instances, inst)
			}
		}
	}
	if len(ids) == 0 {
		return sorted(out), nil
	}
	live, err := g.live(ctx, instances)
	if err != nil {
		return sorted(out), err
	}
	for _, id := range ids {
		if live[id.instance()] {
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

// ErrUnknownClient is returned by SetSession and UpdateSession for a
// client that is not connected: nothing was written.
//
// The session methods serve connected clients only, as IsOnline finds
// them (this process's at once, another process's with two round trips to
// the broker); for any other ID they are no-ops, counted as unknown
// targets. So the session that a killed process's client left in a shared
// store (until the store's TTL) is read through no ID: not through its
// own, which names a process that is gone, nor through any later one,
// which has another incarnation. A session written while its client
// leaves may outlive it, until the store's TTL.
var ErrUnknownClient = errors.New("gateway: no such client")

// SetSession replaces the client's session (ErrUnknownClient if it is
// not connected).
func (g *Gateway) SetSession(ctx context.Context, id ClientID, s map[string]string) error {
	if err := g.sessionTarget(ctx, id); err != nil {
		return err
	}
	return g.Sessions.Set(ctx, string(id), s)
}

// UpdateSession sets the given fields of the client's session, keeping
// the others (ErrUnknownClient if it is not connected).
func (g *Gateway) UpdateSession(ctx context.Context, id ClientID, s map[string]string) error {
	if err := g.sessionTarget(ctx, id); err != nil {
		return err
	}
	return g.Sessions.Update(ctx, string(id), s)
}

// Session returns the client's session: nil if it has none, or if the
// client is not connected.
func (g *Gateway) Session(ctx context.Context, id ClientID) (map[string]string, error) {
	if err := g.sessionTarget(ctx, id); err != nil {
		if errors.Is(err, ErrUnknownClient) {
			return nil, nil
		}
		return nil, err
	}
	return g.Sessions.Get(ctx, string(id))
}

// sessionTarget checks that id is a connected client (ErrUnknownClient,
// counted, if not).
func (g *Gateway) sessionTarget(ctx context.Context, id ClientID) error {
	on, err := g.online(ctx, id)
	if err != nil {
		return err
	}
	if !on {
		g.stats.unknown.Add(1)
		return ErrUnknownClient
	}
	return nil
}
