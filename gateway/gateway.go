//go:build linux || darwin || freebsd

// Package gateway reaches users wherever they are connected: GatewayWorker's
// API (bindUid, joinGroup, sendToUid, sendToGroup, sendToAll, sessions) on
// herd's loops, in one process or across processes and machines.
//
// Every connection added to a Gateway gets a ClientID unique in the
// cluster and never issued again, not by a later process of the same node
// name either (see ClientID). Membership (the uids bound to a client, the groups it joined) is
// kept per loop: each loop owns the records of the clients added on it and
// changes them on its own goroutine (through Loop.Post), so no lock is
// shared by the loops. A message to a group or to everyone is encoded once
// (a WebSocket prepared message) and written by every loop to its own
// members at the same time; a receiver that does not keep up is closed or
// skipped, as the Gateway's SlowConsumer says (SlowClose, SlowDrop), so
// one slow reader holds no one back.
//
// With no Broker the gateway serves one process and needs no external
// service. With one (the redis module's), messages for clients on other
// nodes go through it: to a uid or a group only the nodes that hold a
// member (presence kept in the broker, per uid and per group, with
// expiring entries), to everyone all nodes. So a node's work for a uid or
// group message does not grow with the number of nodes, and
// Stats.Stray, what a node received that it held no member for, stays 0;
// SendToAll alone reaches every node. A member's presence is written off
// its loop, after the JoinGroup or BindUid: a message sent from another
// node in the moment between reaches every member that node's lookup
// found.
// Each node numbers what it publishes per channel, with an epoch, so a
// receiver counts what it missed (pub/sub is at most once) and reports it
// through OnGap; publishing never blocks a loop: it is queued, and a full
// queue drops and counts. A receiver notices a gap only on a channel the
// sender goes on publishing to: messages to a uid or group that were
// routed nowhere while the broker was down or had lost its presence sets
// (restarted empty, until the nodes refresh them, at once after they
// resubscribe) are not numbered for any receiver. The sender counts the
// ones whose lookup failed in Stats.PublishDropped (and, for a uid, those
// found nowhere in UnknownTargets); each receiver learns of the outage by
// its own resubscription (Stats.Resubscribes, OnGap with missed 0).
//
// Each process is one incarnation of its node name, and everything the
// broker keeps per node is per incarnation: its channel
// ("node:<node>-<incarnation>") and the presence set of its clients
// ("n:<node>-<incarnation>"). A node killed without a word (kill -9, a
// crash) leaves behind in the broker its presence entries (its clients in
// its own set and in the sets of their uids and groups), until
// PresenceTTL, and its clients' sessions in a shared SessionStore, until
// the store's TTL if it has one (the redis module's Sessions.TTL; without
// one, until deleted). That is harmless: a later process of the same name
// has another incarnation, so none of it is reachable through an ID it
// issues, and it never reads the dead one's set. Through the dead IDs
// themselves, no node sees those clients: an incarnation is live while it
// is subscribed to its channel (the broker drops the subscription of a
// connection that closed, which a killed process's does at once) and
// heartbeats (a paused or frozen process keeps its subscription but
// stops beating: see LivenessTimeout), and IsOnline, ClientIDsByUid,
// ClientIDsByGroup, GroupCount and the session methods skip the members
// of one that is not. Messages to its uids, groups and clients are not
// published to it once its heartbeat expired: sends to a client or uid
// held only there are counted as unknown targets; before that, a killed
// one's channel has no subscriber, which counts them the same way.
//
// A paused process that goes on (SIGCONT) is live again at its next
// heartbeat, within a third of LivenessTimeout; it counts the pause in
// Stats.Suspended and writes its presence again at once. What was
// published to it before the others took it for gone waits in the
// broker (Redis buffers it, up to its client-output-buffer-limit for
// pub/sub, beyond which it drops the subscription: a resubscription,
// counted) and is delivered late, once; what was sent while it was
// taken for gone was never published to it and is not delivered. No
// message is published twice.
//
// GatewayWorker → herd:
//
//	Gateway::bindUid($client_id, $uid)          g.BindUid(id, uid)
//	Gateway::unbindUid($client_id, $uid)        g.UnbindUid(id, uid)
//	Gateway::joinGroup($client_id, $group)      g.JoinGroup(id, group)
//	Gateway::leaveGroup($client_id, $group)     g.LeaveGroup(id, group)
//	Gateway::ungroup($group)                    g.Ungroup(group)
//	Gateway::sendToClient($client_id, $msg)     g.SendToClient(id, msg)
//	Gateway::sendToUid($uid, $msg)              g.SendToUid(uid, msg)
//	Gateway::sendToGroup($group, $msg, $ex)     g.SendToGroup(group, msg, ex...)
//	Gateway::sendToAll($msg, null, $ex)         g.SendToAll(msg, ex...)
//	Gateway::isOnline($client_id)               g.IsOnline(ctx, id)
//	Gateway::isUidOnline($uid)                  g.IsUidOnline(ctx, uid)
//	Gateway::getClientIdByUid($uid)             g.ClientIDsByUid(ctx, uid)
//	Gateway::getClientIdListByGroup($group)     g.ClientIDsByGroup(ctx, group)
//	Gateway::getClientCountByGroup($group)      g.GroupCount(ctx, group)
//	Gateway::setSession / updateSession         g.SetSession / g.UpdateSession
//	Gateway::getSession($client_id)             g.Session(ctx, id)
//	Gateway::closeClient($client_id)            g.CloseClient(id)
package gateway

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/seed358e4494/herd"
)

// ClientID names a connection across the cluster and across time:
//
//	<node>-<incarnation>-<connection>     e.g. "one-2k7x9q0v3mzp1-1f"
//
// node is the Gateway's Node name (which may itself contain '-': the ID
// is read from the right); incarnation is 64 random bits drawn from
// crypto/rand when the Gateway is attached, in base 36 (at most 13
// characters); connection is the herd connection's ID on that node, in
// hex. It does not name the loop: a connection's loop can change
// (Worker.Scale), its ID cannot.
//
// A ClientID is never issued twice for a node name. Connection IDs start
// again at 1 in every process, so the incarnation is what tells apart a
// node restarted under the same name (after a crash, a kill -9, a
// deploy), the two processes of a binary upgrade that serve side by side
// under one name, or two processes mistakenly given one name: each draws
// its own, and two draws are equal with probability 2^-64. Being random
// rather than a clock or a counter, an incarnation cannot be guessed from
// another: a client that knows its own ID learns nothing of the IDs an
// earlier process of its node issued. An ID of another incarnation names
// another process: this one never treats it as one of its clients, and
// sends, changes, session calls and IsOnline for an ID whose incarnation
// is gone are no-ops counted in Stats.UnknownTargets.
type ClientID string

// parse reads an ID: its instance (node and incarnation, what the ID is
// without its connection part), node and connection. Only the canonical
// form (lowercase, no leading zeros) is accepted, so that one client has
// one ID.
func (id ClientID) parse() (instance, node string, conn uint64, ok bool) {
	s := string(id)
	i := strings.LastIndexByte(s, '-')
	if i <= 0 {
		return "", "", 0, false
	}
	conn, ok = parseCanonical(s[i+1:], 16)
	if !ok {
		return "", "", 0, false
	}
	instance = s[:i]
	j := strings.LastIndexByte(instance, '-')
	if j <= 0 {
		return "", "", 0, false
	}
	if _, ok := parseCanonical(instance[j+1:], 36); !ok {
		return "", "", 0, false
	}
	return instance, instance[:j], conn, true
}

// parseCanonical parses a number written as strconv.FormatUint writes it
// in that base, and nothing else.
func parseCanonical(s string, base int) (uint64, bool) {
	if s == "" || len(s) > 1 && s[0] == '0' {
		return 0, false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < '0' || c > '9') && (c < 'a' || c > 'z') {
			return 0, false
		}
	}
	n, err := strconv.ParseUint(s, base, 64)
	return n, err == nil
}

// Node is the node part of the ID ("" if it is not a ClientID).
func (id ClientID) Node() string {
	_, node, _, _ := id.parse()
	return node
}

// Incarnation is the incarnation part of the ID, as Gateway.Incarnation
// gives it for the process that issued it ("" if it is not a ClientID).
func (id ClientID) Incarnation() string {
	instance, node, _, ok := id.parse()
	if !ok {
		return ""
	}
	return instance[len(node)+1:]
}

// instanceName names one incarnation of a node: "<node>-<incarnation>".
func instanceName(node string, inc uint64) string {
	return node + "-" + strconv.FormatUint(inc, 36)
}

// newIncarnation draws an incarnation: 64 bits from crypto/rand, never 0
// (an envelope's epoch 0 is nobody's).
func newIncarnation() uint64 {
	for {
		var b [8]byte
		rand.Read(b[:])
		if n := binary.LittleEndian.Uint64(b[:]); n != 0 {
			return n
		}
	}
}

// SlowPolicy is what the gateway does with a message for a client whose
// send queue is over the bound: the client cannot keep up with what is
// pushed to it (a room's fast sender, a broadcast).
type SlowPolicy int

const (
	// SlowClose closes the client: it receives, in order and without a
	// gap, every message up to the one that found its queue over the
	// bound, and none after; the application sees the close (OnClose)
	// and the client may reconnect and catch up. A WebSocket client is
	// closed by its server, at the websocket Server's MaxQueuedBytes,
	// with 1008 "slow consumer" (counted in Server.SlowConsumers); a Raw
	// one at the Gateway's MaxQueuedBytes (counted in Stats.SlowClosed).
	SlowClose SlowPolicy = iota
	// SlowDrop keeps the client and drops the messages that find its
	// queue at the Gateway's MaxQueuedBytes or over, counted in
	// Stats.SlowDropped (GatewayWorker's policy): what the client
	// receives is in order, with gaps it is not told of, and its queue
	// stays under MaxQueuedBytes plus one message.
	SlowDrop
)

// DefaultMaxQueuedBytes is the Gateway's MaxQueuedBytes when zero: half
// of websocket.DefaultMaxQueuedBytes, so that with SlowDrop a WebSocket
// client under the server's default bound is never closed by gateway
// messages under 512 KiB.
const DefaultMaxQueuedBytes = 512 << 10

func (g *Gateway) maxQueued() int {
	if g.MaxQueuedBytes == 0 {
		return DefaultMaxQueuedBytes
	}
	return g.MaxQueuedBytes
}

// deliver writes m to r's client, under the slow-consumer policy. It runs
// on r's loop.
func (g *Gateway) deliver(r *record, m *message) {
	if r.slow {
		return // closed as a slow consumer, on its way out
	}
	if limit := g.maxQueued(); limit >= 0 && r.c.Herd().SendQueueBytes() >= limit {
		switch _, ws := r.c.(wsClient); {
		case g.SlowConsumer == SlowDrop:
			g.stats.slowDropped.Add(1)
			return
		case !ws:
			r.slow = true
			g.stats.slowClosed.Add(1)
			r.c.Herd().Close()
			return
		}
		// A WebSocket client under SlowClose: its server's bound decides.
	}
	r.c.deliver(m)
}

// A Gateway registers clients and delivers messages to them by client,
// uid, group or to all. Set its fields, then Attach it to the worker
// before Run. Its methods are safe from any goroutine; the ones that
// change membership or send return at once, and their effects on one
// client happen in the order they were called. The Send methods copy msg
// before they return: the caller may reuse it at once.
type Gateway struct {
	// Node names this process in the cluster; unique per process. Empty
	// means the host name, the process ID and a random suffix.
	Node string
	// Broker carries messages to the other nodes; nil serves this process
	// only.
	Broker Broker
	// Sessions keeps the per-client sessions; nil keeps them in memory.
	Sessions SessionStore
	// UidBroadcast publishes SendToUid to every node instead of only to
	// those where the uid's presence set says it is bound: no lookup per
	// message, every node woken for each (see the bench module).
	UidBroadcast bool
	// SlowConsumer is what happens to a message for a client that does
	// not read fast enough: SlowClose (the zero value) or SlowDrop.
	SlowConsumer SlowPolicy
	// MaxQueuedBytes is the slow-consumer bound of a client's send queue
	// (herd.Conn.SendQueueBytes) for the policies that check it here:
	// SlowDrop for every client, SlowClose for Raw clients. Zero means
	// DefaultMaxQueuedBytes; negative means no bound. With SlowDrop and
	// WebSocket clients, keep it below the websocket Server's
	// MaxQueuedBytes by more than the largest message, or the server's
	// own bound closes the client first.
	MaxQueuedBytes int
	// OnGap is told when messages from another node were lost in the
	// broker (missed counts them; 0 after a reconnection, when how many is
	// not known). It runs on the broker's goroutine.
	OnGap func(node string, missed uint64)
	// Logger receives the gateway's logs; nil means slog.Default().
	Logger *slog.Logger

	node     string
	inc      uint64 // this process's incarnation (newIncarnation)
	instance string // instanceName(node, inc): the IDs' prefix, the node's channel and presence set
	w        *herd.Worker
	mu       sync.Mutex           // serializes changes of view
	view     atomic.Pointer[view] // the shards of the loops serving now
	where    sync.Map             // connection ID → *shard
	counts   memberCounts         // members on this node, per uid and group
	pub      *publisher
	ready    chan struct{} // closed once the node receives what other nodes publish
	stats    counters
}

// Stats counts what the gateway did.
type Stats struct {
	Clients        int64  // registered on this node
	UnknownTargets uint64 // sends, changes, session calls and IsOnline for a client, uid or group not found (a client of another incarnation included): no-ops
	Published      uint64 // messages handed to the broker
	PublishDropped uint64 // messages the broker could not take (queue full, broker down)
	Received       uint64 // messages from other nodes
	Malformed      uint64 // messages from the broker that were not the gateway's, dropped
	Gaps           uint64 // times a gap was seen in another node's numbering
	Missed         uint64 // messages those gaps counted
	Resubscribes   uint64 // reconnections to the broker, each a possible loss
	// Stray counts messages from other nodes to a uid or group that this
	// node held no member of when they came: work that routing by presence
	// exists to avoid. It stays 0 but for membership that changed while a
	// message was on its way (a leave, an unbind, a close), and with
	// UidBroadcast, where every node receives every uid message.
	Stray uint64
	// SlowDropped counts messages not sent to a slow client (SlowDrop).
	SlowDropped uint64
	// SlowClosed counts Raw clients closed as slow consumers (SlowClose;
	// the websocket Server counts its own in SlowConsumers).
	SlowClosed uint64
	// Suspended counts the times this node went longer than
	// LivenessTimeout without a heartbeat (paused, starved, cut off from
	// the broker), so that the other nodes took it for gone meanwhile.
	Suspended uint64
}

type counters struct {
	clients                                                                                                                    atomic.Int64
	unknown, published, pubDropped, received, malformed, gaps, missed, resubscribes, stray, suspended, slowDropped, slowClosed atomic.Uint64
}

// Stats returns the gateway's counters.
func (g *Gateway) Stats() Stats {
	s := &g.stats
	return Stats{Clients: s.clients.Load(), UnknownTargets: s.unknown.Load(), Published: s.published.Load(), PublishDropped: s.pubDropped.Load(),
		Received: s.received.Load(), Malformed: s.malformed.Load(), Gaps: s.gaps.Load(), Missed: s.missed.Load(), Resubscribes: s.resubscribes.Load(),
		Stray: s.stray.Load(), Suspended: s.suspended.Load(),
		SlowDropped: s.slowDropped.Load(), SlowClosed: s.slowClosed.Load()}
}

func (g *Gateway) logger() *slog.Logger {
	if g.Logger != nil {
		return g.Logger
	}
	return slog.Default()
}

// NodeName is the node's name, as resolved by Attach.
func (g *Gateway) NodeName() string { return g.node }

// Incarnation tells this process's gateway apart from every other one of
// the same NodeName: the middle part of the IDs it issues (see ClientID).
// It is drawn by Attach.
func (g *Gateway) Incarnation() string { return strconv.FormatUint(g.inc, 36) }

// Attach makes g serve w's loops: each loop gets its share of the
// registry when it starts, and hands it to loop 0 when it leaves (Scale).
// With a Broker, it subscribes the node when the first loop starts. It
// keeps the worker's own OnWorkerStart and OnWorkerStop, which run after
// the gateway's part.
func (g *Gateway) Attach(w *herd.Worker) error {
	if g.w != nil {
		return errors.New("gateway: already attached")
	}
	g.w = w
	g.node = g.Node
	if g.node == "" {
		host, _ := os.Hostname()
		var b [3]byte
		rand.Read(b[:])
		g.node = fmt.Sprintf("%s.%d.%s", host, os.Getpid(), hex.EncodeToString(b[:]))
	}
	if strings.ContainsAny(g.node, " \t\n") {
		return fmt.Errorf("gateway: node name %q has spaces", g.node)
	}
	g.inc = newIncarnation()
	g.instance = instanceName(g.node, g.inc)
	if g.Sessions == nil {
		g.Sessions = NewMemorySessions()
	}
	g.ready = make(chan struct{})
	if g.Broker != nil {
		g.pub = newPublisher(g)
	} else {
		close(g.ready)
	}
	start, stop := w.OnWorkerStart, w.OnWorkerStop
	var once sync.Once
	w.OnWorkerStart = func(l *herd.Loop) {
		g.addShard(&shard{g: g, loop: l, clients: map[uint64]*record{}, uids: map[string]map[uint64]*record{}, groups: map[string]map[uint64]*record{}})
		if g.pub != nil {
			once.Do(g.pub.start)
		}
		if start != nil {
			start(l)
		}
	}
	w.OnWorkerStop = func(l *herd.Loop) {
		g.retire(l)
		if stop != nil {
			stop(l)
		}
	}
	return nil
}

// Ready is closed once the node receives what the other nodes publish
// (at once without a Broker). Messages published to it before are not
// received.
func (g *Gateway) Ready() <-chan struct{} { return g.ready }

// Close stops the gateway's part of the cluster: the broker subscription
// and the presence refresh. Call it after the worker has stopped.
func (g *Gateway) Close() error {
	if g.pub != nil {
		return g.pub.close()
	}
	return nil
}

// Add registers a client and returns its ID. Call it on the client's loop
// (OnOpen, OnConnect), and Remove from OnClose.
func (g *Gateway) Add(c Client) ClientID {
	hc := c.Herd()
	id := ClientID(g.instance + "-" + strconv.FormatUint(hc.ID(), 16))
	s := g.shardOf(hc.Loop().Index())
	if s == nil {
		return id // not attached: nothing will find it
	}
	s.clients[hc.ID()] = &record{id: id, conn: hc.ID(), c: c}
	g.where.Store(hc.ID(), s)
	g.stats.clients.Add(1)
	s.presence(nodeKey(g.instance), id, true)
	return id
}

// Remove forgets a client (its uids, groups and session). Call it from
// OnClose. An ID that is not this node's client is a no-op, counted.
func (g *Gateway) Remove(id ClientID) {
	g.onClient(id, func(s *shard, r *record) {
		for uid := range r.uids {
			s.unbind(r, uid)
		}
		for group := range r.groups {
			s.leave(r, group)
		}
		delete(s.clients, r.conn)
		g.where.Delete(r.conn)
		g.stats.clients.Add(-1)
		s.presence(nodeKey(g.instance), id, false)
		// After it is gone from where: a session call that comes later
		// finds no client and writes nothing.
		g.deleteSession(string(id))
	})
}

// deleteSession drops a departed client's session without holding up the
// caller (OnClose, on the loop): a store in this process's memory at
// once, any other off the loop, within brokerTimeout.
func (g *Gateway) deleteSession(key string) {
	if m, ok := g.Sessions.(*MemorySessions); ok {
		m.Delete(context.Background(), key)
		return
	}
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), brokerTimeout)
		defer cancel()
		if err := g.Sessions.Delete(ctx, key); err != nil {
			g.logger().Debug("gateway: deleting a session", "key", key, "err", err)
		}
	}()
}

// BindUid binds a uid (a user) to the client; a uid may have several
// clients (tabs, devices), a client several uids.
func (g *Gateway) BindUid(id ClientID, uid string) {
	g.onClient(id, func(s *shard, r *record) { s.bind(r, uid) })
}

// UnbindUid undoes BindUid.
func (g *Gateway) UnbindUid(id ClientID, uid string) {
	g.onClient(id, func(s *shard, r *record) { s.unbind(r, uid) })
}

// JoinGroup puts the client in a group (a room).
func (g *Gateway) JoinGroup(id ClientID, group string) {
	g.onClient(id, func(s *shard, r *record) { s.join(r, group) })
}

// LeaveGroup takes the client out of a group.
func (g *Gateway) LeaveGroup(id ClientID, group string) {
	g.onClient(id, func(s *shard, r *record) { s.leave(r, group) })
}

// Ungroup empties a group on every node.
func (g *Gateway) Ungroup(group string) {
	g.local(func(s *shard, _ uint64) { s.ungroup(group) })
	g.publish(allChannel, envelope{kind: kindUngroup, target: group})
}

// CloseClient closes a client's connection, wherever it is.
func (g *Gateway) CloseClient(id ClientID) {
	if g.remote(id) {
		g.publish(nodeChannel(id.instance()), envelope{kind: kindClose, target: string(id)})
		return
	}
	g.onClient(id, func(s *shard, r *record) { r.c.Herd().Close() })
}

// SendToClient sends msg to one client.
func (g *Gateway) SendToClient(id ClientID, msg []byte) {
	m := newMessage(msg)
	if g.remote(id) {
		g.publish(nodeChannel(id.instance()), envelope{kind: kindClient, target: string(id), payload: m.data})
		return
	}
	g.onClient(id, func(s *shard, r *record) { g.deliver(r, m) })
}

// SendToUid sends msg to every client bound to uid, on every node.
func (g *Gateway) SendToUid(uid string, msg []byte) {
	if g.pub == nil && !g.counts.has(uidKey(uid)) {
		g.stats.unknown.Add(1)
		return
	}
	m := newMessage(msg)
	g.local(func(s *shard, v uint64) { s.sendUid(uid, m, v) })
	if g.pub != nil {
		g.pub.route(uidKey(uid), envelope{kind: kindUid, target: uid, payload: m.data})
	}
}

// SendToGroup sends msg to every member of group, on every node, except
// the clients in exclude. Like SendToUid, it is published only to the
// nodes that hold a member (one not excluded), as the group's presence
// set lists them.
func (g *Gateway) SendToGroup(group string, msg []byte, exclude ...ClientID) {
	if g.pub == nil && !g.counts.has(groupKey(group)) {
		g.stats.unknown.Add(1)
		return
	}
	m := newMessage(msg)
	ex := g.localExclusions(exclude)
	g.local(func(s *shard, v uint64) { s.sendGroup(group, m, ex, v) })
	if g.pub != nil {
		g.pub.route(groupKey(group), envelope{kind: kindGroup, target: group, exclude: slices.Clone(exclude), payload: m.data})
	}
}

// SendToAll sends msg to every client on every node, except those in
// exclude.
func (g *Gateway) SendToAll(msg []byte, exclude ...ClientID) {
	m := newMessage(msg)
	ex := g.localExclusions(exclude)
	g.local(func(s *shard, v uint64) { s.sendAll(m, ex, v) })
	g.publish(allChannel, envelope{kind: kindAll, exclude: slices.Clone(exclude), payload: m.data})
}

// instance is the ID's instance part ("<node>-<incarnation>"), or "".
func (id ClientID) instance() string {
	instance, _, _, _ := id.parse()
	return instance
}

// isLocal reports whether id names a client of this process: of this
// node name and incarnation.
func (g *Gateway) isLocal(id ClientID) bool { return id.instance() == g.instance }

// remote reports whether id names a client of another process (another
// node, or another incarnation of this one) that the broker can reach.
// (Anything else goes to onClient, which counts what it does not find.)
func (g *Gateway) remote(id ClientID) bool {
	instance := id.instance()
	return instance != "" && instance != g.instance && g.pub != nil
}

// localExclusions is the set of this node's connections in exclude.
func (g *Gateway) localExclusions(exclude []ClientID) map[uint64]bool {
	if len(exclude) == 0 {
		return nil
	}
	ex := make(map[uint64]bool, len(exclude))
	for _, id := range exclude {
		if instance, _, conn, ok := id.parse(); ok && instance == g.instance {
			ex[conn] = true
		}
	}
	return ex
}

// onClient runs f on the loop that owns the client's record. An unknown
// client, one of another node or of another incarnation of this one
// included, is a no-op, counted.
func (g *Gateway) onClient(id ClientID, f func(*shard, *record)) {
	instance, _, conn, ok := id.parse()
	if !ok || instance != g.instance {
		g.stats.unknown.Add(1)
		return
	}
	v, ok := g.where.Load(conn)
	if !ok {
		g.stats.unknown.Add(1)
		return
	}
	s := v.(*shard)
	posted := s.loop.Post(func() {
		if cur, _ := g.where.Load(conn); cur != s {
			g.onClient(id, f) // moved to another shard meanwhile
			return
		}
		if r := s.clients[conn]; r != nil {
			f(s, r)
		} else {
			g.stats.unknown.Add(1)
		}
	})
	if !posted {
		// Its loop left: the record is on its way to loop 0.
		g.afterRetire(s, func() { g.onClient(id, f) })
	}
}

// view is the set of shards a fan-out goes to. Its version grows with
// each change; a record absorbed from a loop that left carries the
// version of the view that no longer lists that loop, so that a fan-out
// made with an older view (which reaches the old shard itself) does not
// reach it a second time through loop 0.
type view struct {
	version uint64
	shards  []*shard
}

func (g *Gateway) currentView() *view {
	if v := g.view.Load(); v != nil {
		return v
	}
	return &view{}
}

// shardOf is the shard of the loop with that index, or nil.
func (g *Gateway) shardOf(index int) *shard {
	for _, s := range g.currentView().shards {
		if s.loop.Index() == index {
			return s
		}
	}
	return nil
}

// addShard lists a new loop's shard (OnWorkerStart).
func (g *Gateway) addShard(s *shard) {
	g.mu.Lock()
	defer g.mu.Unlock()
	v := g.currentView()
	g.view.Store(&view{version: v.version + 1, shards: append(append([]*shard(nil), v.shards...), s)})
}

// local runs f on every loop's shard, with the view's version.
func (g *Gateway) local(f func(s *shard, version uint64)) {
	v := g.currentView()
	for _, s := range v.shards {
		if !s.loop.Post(func() { f(s, v.version) }) {
			// Its loop left: loop 0 runs f on its records once they are
			// handed over (until then they are no one else's). All of
			// them: this view reached none of them elsewhere.
			g.afterRetire(s, func() { f(s, math.MaxUint64) })
		}
	}
}

// localAny runs f on every loop's shard, as local does, and none once
// they have all run, if f reported false on each (no shard held what it
// looked for).
func (g *Gateway) localAny(f func(s *shard, version uint64) bool, none func()) {
	v := g.currentView()
	left := atomic.Int64{}
	left.Store(int64(len(v.shards)))
	var found atomic.Bool
	done := func(ok bool) {
		if ok {
			found.Store(true)
		}
		if left.Add(-1) == 0 && !found.Load() {
			none()
		}
	}
	for _, s := range v.shards {
		if !s.loop.Post(func() { done(f(s, v.version)) }) {
			g.afterRetire(s, func() { done(f(s, math.MaxUint64)) })
		}
	}
}

// stray counts a message from another node that no shard had a member
// for.
func (g *Gateway) stray() { g.stats.stray.Add(1) }

// afterRetire runs f on loop 0 once s, whose loop no longer takes tasks,
// has been absorbed there (retire), in the order of the calls: before the
// absorption f waits in the shard's pending list, which the absorption
// runs; after it, f is posted to loop 0. When the whole worker stops, f is
// dropped.
func (g *Gateway) afterRetire(s *shard, f func()) {
	s.mu.Lock()
	if !s.retired {
		s.pending = append(s.pending, f)
		s.mu.Unlock()
		return
	}
	s.mu.Unlock()
	if heir := g.shardOf(0); heir != nil && heir != s {
		heir.loop.Post(f)
	}
}

// retire hands the shard of a loop that leaves to loop 0 (OnWorkerStop):
// the absorption is queued on loop 0 before the view drops the shard, so
// that every fan-out made with the new view reaches its records there.
// When the whole worker stops there is no one to take it.
func (g *Gateway) retire(l *herd.Loop) {
	g.mu.Lock()
	defer g.mu.Unlock()
	v := g.currentView()
	var old, heir *shard
	rest := make([]*shard, 0, len(v.shards))
	for _, s := range v.shards {
		switch {
		case s.loop == l:
			old = s
			continue
		case s.loop.Index() == 0:
			heir = s
		}
		rest = append(rest, s)
	}
	if old == nil {
		return
	}
	next := &view{version: v.version + 1, shards: rest}
	if heir == nil || !heir.loop.Post(func() { heir.absorb(old, next.version) }) {
		old.retire() // the worker stops: what waits is dropped
	}
	g.view.Store(next)
}

// publish hands an envelope to the broker, if there is one.
func (g *Gateway) publish(channel string, e envelope) {
	if g.pub != nil {
		g.pub.publish(channel, e)
	}
}
