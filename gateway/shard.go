//go:build linux || darwin || freebsd

package gateway

import (
	"sync"

	"github.com/seed358e4494/herd"
)

// shard is one loop's part of the registry: the clients added on that
// loop, by connection, uid and group. Only that loop's goroutine touches
// it (after a Scale took the loop away, loop 0's, which absorbed it).
type shard struct {
	g       *Gateway
	loop    *herd.Loop
	clients map[uint64]*record
	uids    map[string]map[uint64]*record
	groups  map[string]map[uint64]*record

	mu      sync.Mutex
	retired bool     // its loop left and loop 0 took its records
	pending []func() // work for its records that came after its loop left, before loop 0 took them
}

// retire marks the shard taken and returns what waited for that.
func (s *shard) retire() []func() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.retired = true
	p := s.pending
	s.pending = nil
	return p
}

// record is one client's entry.
type record struct {
	id     ClientID
	conn   uint64
	slow   bool   // closed as a slow consumer (SlowClose, Raw)
	since  uint64 // the view version from which this shard holds it (absorbed from a loop that left), else 0
	c      Client
	uids   map[string]struct{}
	groups map[string]struct{}
}

func (s *shard) bind(r *record, uid string)   { s.enter(s.uids, &r.uids, uidKey(uid), uid, r) }
func (s *shard) unbind(r *record, uid string) { s.exit(s.uids, r.uids, uidKey(uid), uid, r) }
func (s *shard) join(r *record, group string) {
	s.enter(s.groups, &r.groups, groupKey(group), group, r)
}
func (s *shard) leave(r *record, group string) { s.exit(s.groups, r.groups, groupKey(group), group, r) }

// enter puts r in index under name (a uid or a group), and name in r's own
// set; the node's count and the broker's presence set (key) follow.
func (s *shard) enter(index map[string]map[uint64]*record, own *map[string]struct{}, key, name string, r *record) {
	if *own == nil {
		*own = map[string]struct{}{}
	}
	if _, ok := (*own)[name]; ok {
		return
	}
	(*own)[name] = struct{}{}
	add(index, name, r)
	s.count(key, 1)
	s.presence(key, r.id, true)
}

// exit undoes enter; a name r does not have is counted as unknown.
func (s *shard) exit(index map[string]map[uint64]*record, own map[string]struct{}, key, name string, r *record) {
	if _, ok := own[name]; !ok {
		s.g.stats.unknown.Add(1)
		return
	}
	delete(own, name)
	remove(index, name, r)
	s.count(key, -1)
	s.presence(key, r.id, false)
}

func (s *shard) ungroup(group string) {
	key := groupKey(group)
	for _, r := range s.groups[group] {
		delete(r.groups, group)
		s.presence(key, r.id, false)
		s.count(key, -1)
	}
	delete(s.groups, group)
}

// count keeps the node's member counts, which only a gateway without a
// broker reads (with one, another node may hold the uid or group).
func (s *shard) count(key string, d int) {
	if s.g.pub == nil {
		s.g.counts.change(key, d)
	}
}

// presence tells the broker, if any, that id joined or left key.
func (s *shard) presence(key string, id ClientID, in bool) {
	if s.g.pub != nil {
		s.g.pub.presence(key, id, in)
	}
}

func add(m map[string]map[uint64]*record, key string, r *record) {
	set := m[key]
	if set == nil {
		set = map[uint64]*record{}
		m[key] = set
	}
	set[r.conn] = r
}

func remove(m map[string]map[uint64]*record, key string, r *record) {
	if set := m[key]; set != nil {
		delete(set, r.conn)
		if len(set) == 0 {
			delete(m, key)
		}
	}
}

// The fan-outs deliver to the shard's records that the sender's view (of
// that version) reached here: not to those absorbed since, which it
// reached in the shard they came from.

// sendUid and sendGroup report whether the shard held a member the
// sender's view reached (an excluded one included).

func (s *shard) sendUid(uid string, m *message, version uint64) (member bool) {
	for _, r := range s.uids[uid] {
		if r.since <= version {
			s.g.deliver(r, m)
			member = true
		}
	}
	return member
}

func (s *shard) sendGroup(group string, m *message, exclude map[uint64]bool, version uint64) (member bool) {
	for conn, r := range s.groups[group] {
		if r.since <= version {
			member = true
			if !exclude[conn] {
				s.g.deliver(r, m)
			}
		}
	}
	return member
}

func (s *shard) sendAll(m *message, exclude map[uint64]bool, version uint64) {
	for conn, r := range s.clients {
		if !exclude[conn] && r.since <= version {
			s.g.deliver(r, m)
		}
	}
}

// absorb takes the records of a shard whose loop left; the view without
// that loop has the given version.
func (s *shard) absorb(old *shard, version uint64) {
	for conn, r := range old.clients {
		r.since = version
		s.clients[conn] = r
		s.g.where.Store(conn, s)
	}
	for uid, set := range old.uids {
		for _, r := range set {
			add(s.uids, uid, r)
		}
	}
	for group, set := range old.groups {
		for _, r := range set {
			add(s.groups, group, r)
		}
	}
	for _, f := range old.retire() {
		f()
	}
}

// uidKey and groupKey name presence sets in the broker.
func uidKey(uid string) string       { return "u:" + uid }
func groupKey(group string) string   { return "g:" + group }
func nodeKey(node string) string     { return "n:" + node }
func nodeChannel(node string) string { return "node:" + node }

const allChannel = "all"

// memberCounts counts, per uid and group, the members on this node over
// all loops, so that a send to a uid or group no one here holds is known
// at once: a no-op, counted, where there is no other node to try. It is
// kept only without a broker; membership changes write it, sends read it.
type memberCounts struct {
	mu sync.Mutex
	n  map[string]int
}

func (m *memberCounts) change(key string, d int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.n == nil {
		m.n = map[string]int{}
	}
	if v := m.n[key] + d; v > 0 {
		m.n[key] = v
	} else {
		delete(m.n, key)
	}
}

func (m *memberCounts) has(key string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.n[key] > 0
}
