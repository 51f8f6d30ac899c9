//go:build linux || darwin || freebsd

package gateway

import (
	"context"
	"encoding/binary"
	"errors"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// A Broker connects the nodes of a cluster: publish and subscribe for
// messages, and presence sets (which clients hold a uid, are in a group,
// are on a node) whose entries expire unless refreshed, so that a node
// that dies leaves nothing behind for long. Each process subscribes to a
// channel of its own (its node name and incarnation) for as long as it
// lives: the broker's count of that channel's subscribers is how the
// other nodes know, at once, that a process is gone. The redis module has
// one; the gateway calls it from a goroutine of its own, never from a
// loop.
type Broker interface {
	// Subscribe delivers what is published on channels until ctx ends,
	// then returns. It calls deliver on one goroutine, in the order of
	// publication, and subscribed once all the channels are subscribed:
	// with again false the first time, true after each reconnection (what
	// was published meanwhile is lost). It keeps trying while the broker
	// is unreachable.
	Subscribe(ctx context.Context, channels []string, deliver func(channel string, payload []byte), subscribed func(again bool)) error
	// Publish sends each message to its channel, and returns how many
	// subscribers received each, in the order of msgs (nil if the broker
	// cannot tell).
	Publish(ctx context.Context, msgs []Outgoing) (received []int, err error)
	// Subscribers counts the subscribers of each channel now, in one
	// round trip.
	Subscribers(ctx context.Context, channels []string) ([]int, error)
	// UpdatePresence adds members to and removes them from presence sets;
	// an added member expires after ttl unless added again.
	UpdatePresence(ctx context.Context, ttl time.Duration, changes []PresenceChange) error
	// Members lists the unexpired members of each presence set, in one
	// round trip.
	Members(ctx context.Context, keys []string) ([][]string, error)
	// IsMember reports whether member is in the set, unexpired.
	IsMember(ctx context.Context, key, member string) (bool, error)
}

// Outgoing is a message for Broker.Publish.
type Outgoing struct {
	Channel string
	Payload []byte
}

// PresenceChange is an addition to (In) or removal from a presence set.
type PresenceChange struct {
	Key, Member string
	In          bool
}

// PresenceTTL is how long a presence entry lives without a refresh; each
// node refreshes its entries every third of it.
const PresenceTTL = 30 * time.Second

// LivenessTimeout bounds how long a node that stopped (killed, paused
// with SIGSTOP, frozen, cut off from the broker) is taken for live by the
// others. Each node heartbeats every third of it: it adds itself to the
// broker's presence set "live" with this TTL. A process is live while its
// heartbeat is unexpired and it is subscribed to its channel; a killed
// one loses its subscription at once, a paused one keeps it (the broker
// buffers what is published to it) but stops heartbeating, and is gone
// for the others within LivenessTimeout of its last heartbeat. The
// heartbeat's expiry is the sender's clock plus the TTL, compared with
// the reader's clock: the nodes' clocks must agree to well within a
// second (NTP does).
const LivenessTimeout = 3 * time.Second

// liveKey is the presence set of the live node incarnations.
const liveKey = "live"

// Envelope kinds.
const (
	kindClient byte = iota + 1
	kindUid
	kindGroup
	kindAll
	kindUngroup
	kindClose
)

// envelope is what one node publishes: who sends it, its place in the
// sender's numbering of the channel, what it is for, and the message.
type envelope struct {
	node    string
	epoch   uint64 // the sender's incarnation (Gateway.inc): a new one restarts the numbering
	seq     uint64 // per sender and channel, from 1
	kind    byte
	target  string // client ID, uid or group
	exclude []ClientID
	payload []byte
}

// magic starts every envelope; anything else on the channels is foreign.
const magic = "HGW1"

var errMalformed = errors.New("gateway: malformed message")

// encode is the envelope on the wire: magic, kind, epoch, seq, then
// length-prefixed node, target and exclusions, then the payload.
func (e *envelope) encode() []byte {
	b := make([]byte, 0, len(magic)+1+2*binary.MaxVarintLen64+len(e.node)+len(e.target)+len(e.payload)+16)
	b = append(b, magic...)
	b = append(b, e.kind)
	b = binary.AppendUvarint(b, e.epoch)
	b = binary.AppendUvarint(b, e.seq)
	b = appendString(b, e.node)
	b = appendString(b, e.target)
	b = binary.AppendUvarint(b, uint64(len(e.exclude)))
	for _, id := range e.exclude {
		b = appendString(b, string(id))
	}
	return append(b, e.payload...)
}

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// decodeEnvelope parses what encode made; anything else is errMalformed.
// The payload aliases b.
func decodeEnvelope(b []byte) (envelope, error) {
	var e envelope
	if !strings.HasPrefix(string(b), magic) || len(b) < len(magic)+1 {
		return e, errMalformed
	}
	b = b[len(magic):]
	e.kind, b = b[0], b[1:]
	if e.kind < kindClient || e.kind > kindClose {
		return e, errMalformed
	}
	var ok bool
	if e.epoch, b, ok = uvarint(b); !ok {
		return e, errMalformed
	}
	if e.seq, b, ok = uvarint(b); !ok {
		return e, errMalformed
	}
	if e.node, b, ok = str(b); !ok || e.node == "" {
		return e, errMalformed
	}
	if e.target, b, ok = str(b); !ok {
		return e, errMalformed
	}
	n, b, ok := uvarint(b)
	if !ok || n > uint64(len(b)) { // each exclusion takes a byte at least
		return e, errMalformed
	}
	for range n {
		var id string
		if id, b, ok = str(b); !ok {
			return e, errMalformed
		}
		e.exclude = append(e.exclude, ClientID(id))
	}
	e.payload = b
	return e, nil
}

func uvarint(b []byte) (uint64, []byte, bool) {
	v, n := binary.Uvarint(b)
	if n <= 0 {
		return 0, b, false
	}
	return v, b[n:], true
}

func str(b []byte) (string, []byte, bool) {
	n, b, ok := uvarint(b)
	if !ok || n > uint64(len(b)) {
		return "", b, false
	}
	return string(b[:n]), b[n:], true
}

// publishQueue bounds what waits for the broker: beyond it, messages are
// dropped and counted, so that a slow or absent broker never holds a loop.
const publishQueue = 8192

// publisher is the gateway's goroutine for the broker: it publishes,
// keeps presence, and receives.
type publisher struct {
	g         *Gateway
	epoch     uint64
	jobs      chan job
	ctx       context.Context
	cancel    context.CancelFunc
	done      chan struct{}
	beating   chan struct{} // closed when heartbeat returns
	started   time.Time
	lastBeat  atomic.Int64 // when the last heartbeat succeeded, in nanoseconds since started (monotonic: a SIGSTOP counts, a clock step does not)
	readyOnce sync.Once

	// Owned by the publishing goroutine.
	seq map[string]uint64 // per channel

	// Owned by the receiving goroutine (the broker's deliver).
	last map[seqKey]uint64   // per sender incarnation and channel: last seq seen
	seen map[string][]uint64 // per sender node name: the incarnations in last, oldest first
}

// job is one piece of work for the publishing goroutine: a message to a
// channel, to the nodes of a uid or group, or a presence change.
type job struct {
	channel string
	route   string // a presence key (uidKey, groupKey): to the node incarnations that hold a member
	env     envelope
	change  *PresenceChange
}

func newPublisher(g *Gateway) *publisher {
	ctx, cancel := context.WithCancel(context.Background())
	return &publisher{g: g, epoch: g.inc, jobs: make(chan job, publishQueue),
		ctx: ctx, cancel: cancel, done: make(chan struct{}), beating: make(chan struct{}), started: time.Now(), seq: map[string]uint64{}, last: map[seqKey]uint64{}, seen: map[string][]uint64{}}
}

// enqueue queues a job, or drops and counts it when the queue is full.
func (p *publisher) enqueue(j job) {
	select {
	case p.jobs <- j:
	default:
		p.g.stats.pubDropped.Add(1)
	}
}

func (p *publisher) publish(channel string, e envelope) { p.enqueue(job{channel: channel, env: e}) }
func (p *publisher) route(key string, e envelope)       { p.enqueue(job{route: key, env: e}) }
func (p *publisher) presence(key string, id ClientID, in bool) {
	p.enqueue(job{change: &PresenceChange{Key: key, Member: string(id), In: in}})
}

// start subscribes the node and starts the publishing goroutine.
func (p *publisher) start() {
	g := p.g
	subscribed := func(again bool) {
		if !again {
			// Live before ready: the others route to this node from
			// its first client on.
			p.beat()
			p.readyOnce.Do(func() { close(g.ready) })
			return
		}
		p.beat()
		g.stats.resubscribes.Add(1)
		g.logger().Warn("gateway: reconnected to the broker; messages published meanwhile are lost", "node", g.node)
		if g.OnGap != nil {
			g.OnGap("", 0)
		}
		p.enqueue(job{}) // an empty job: refresh presence now (the broker may have lost it)
	}
	go func() {
		// Not on the loop that starts first: the broker may be slow or
		// down, and keeps trying on its own.
		if err := g.Broker.Subscribe(p.ctx, []string{nodeChannel(g.instance), allChannel}, p.receive, subscribed); err != nil && p.ctx.Err() == nil {
			g.logger().Error("gateway: subscribing to the broker", "node", g.node, "err", err)
		}
	}()
	go p.run()
	go p.heartbeat()
}

func (p *publisher) close() error {
	p.cancel()
	<-p.done
	<-p.beating
	// Gone for the others at once, not after LivenessTimeout.
	ctx, cancel := context.WithTimeout(context.Background(), brokerTimeout)
	defer cancel()
	return p.g.Broker.UpdatePresence(ctx, LivenessTimeout, []PresenceChange{{Key: liveKey, Member: p.g.instance}})
}

// heartbeat beats every third of LivenessTimeout until the gateway
// closes.
func (p *publisher) heartbeat() {
	defer close(p.beating)
	t := time.NewTicker(LivenessTimeout / 3)
	defer t.Stop()
	for {
		select {
		case <-p.ctx.Done():
			return
		case <-t.C:
			p.beat()
		}
	}
}

// beat adds this incarnation to the live set. A beat that succeeds more
// than LivenessTimeout after the last one that did means the others took
// this node for gone meanwhile (it was paused, starved, or cut off from
// the broker): counted once in Stats.Suspended, and its presence is
// written again at once, in case it expired meanwhile.
func (p *publisher) beat() {
	ctx, cancel := context.WithTimeout(p.ctx, brokerTimeout)
	defer cancel()
	if err := p.g.Broker.UpdatePresence(ctx, LivenessTimeout, []PresenceChange{{Key: liveKey, Member: p.g.instance, In: true}}); err != nil {
		p.g.logger().Debug("gateway: heartbeat failed", "err", err)
		return
	}
	now := time.Since(p.started)
	if last := time.Duration(p.lastBeat.Swap(int64(now))); last != 0 && now-last > LivenessTimeout {
		p.g.stats.suspended.Add(1)
		p.g.logger().Warn("gateway: no heartbeat for longer than LivenessTimeout; the other nodes took this one for gone meanwhile", "node", p.g.node, "for", now-last)
		p.enqueue(job{}) // refresh presence now
	}
}

// maxBatch bounds the messages published in one call.
const maxBatch = 256

func (p *publisher) run() {
	defer close(p.done)
	refresh := time.NewTicker(PresenceTTL / 3)
	defer refresh.Stop()
	var batch []job
	for {
		select {
		case <-p.ctx.Done():
			return
		case <-refresh.C:
			p.refresh()
			continue
		case j := <-p.jobs:
			batch = append(batch[:0], j)
		}
		// Whatever else waits goes in the same round trips.
	more:
		for len(batch) < maxBatch {
			select {
			case j := <-p.jobs:
				batch = append(batch, j)
			default:
				break more
			}
		}
		p.handle(batch)
	}
}

// handle publishes a batch of jobs: the presence lookups of its messages
// to uids and groups in one round trip, then the messages in the order
// they came (one subscriber receives them in that order, whatever their
// channels), then the presence changes.
func (p *publisher) handle(batch []job) {
	nodes, live := p.routeNodes(batch)
	var out []Outgoing
	var from []int // per message in out: its job's index in batch
	var changes []PresenceChange
	for i, j := range batch {
		switch {
		case j.change != nil:
			changes = append(changes, *j.change)
		case j.route != "" && j.env.kind == kindUid && p.g.UidBroadcast:
			out = p.stamp(out, allChannel, j.env)
		case j.route != "":
			for _, node := range nodes[i] {
				out = p.stamp(out, nodeChannel(node), j.env)
			}
		case (j.env.kind == kindClient || j.env.kind == kindClose) && live != nil && !live[ClientID(j.env.target).instance()]:
			// Its process stopped heartbeating: gone for this node.
			p.g.stats.unknown.Add(1)
			continue
		case j.channel != "":
			out = p.stamp(out, j.channel, j.env)
		default:
			p.refresh()
			continue
		}
		for len(from) < len(out) {
			from = append(from, i)
		}
	}
	p.flush(batch, out, from, changes)
}

// stamp numbers an envelope for channel and adds it to out.
func (p *publisher) stamp(out []Outgoing, channel string, e envelope) []Outgoing {
	p.seq[channel]++
	e.node, e.epoch, e.seq = p.g.node, p.epoch, p.seq[channel]
	return append(out, Outgoing{Channel: channel, Payload: e.encode()})
}

// routeNodes gives, for each message of the batch to a uid or group
// (by its index in batch), the other live node incarnations
// ("<node>-<incarnation>", another of this node's name included) that
// hold a member of it, from its presence set; for a group, members the
// message excludes do not count. With them comes the set of live
// incarnations (heartbeat unexpired) if the batch has a message to a
// uid, group or client; nil if not, or if the lookup failed. The lookups
// take one round trip for the batch. A uid bound nowhere else live is
// counted as an unknown target there (a group is not: this node may hold
// it).
func (p *publisher) routeNodes(batch []job) (map[int][]string, map[string]bool) {
	var keys []string
	for _, j := range batch {
		routed := j.route != "" && !(j.env.kind == kindUid && p.g.UidBroadcast)
		if routed && !contains(keys, j.route) {
			keys = append(keys, j.route)
		}
		if (routed || j.env.kind == kindClient || j.env.kind == kindClose) && !contains(keys, liveKey) {
			keys = append(keys, liveKey)
		}
	}
	if len(keys) == 0 {
		return nil, nil
	}
	ctx, cancel := context.WithTimeout(p.ctx, brokerTimeout)
	defer cancel()
	members, err := p.g.Broker.Members(ctx, keys)
	if err != nil {
		p.g.logger().Debug("gateway: presence lookup failed", "err", err)
		members = make([][]string, len(keys)) // sent nowhere: counted as dropped below
	}
	var live map[string]bool
	if err == nil {
		live = map[string]bool{}
		for _, inst := range members[slices.Index(keys, liveKey)] {
			live[inst] = true
		}
	}
	nodes := make(map[int][]string)
	for i, j := range batch {
		if j.route == "" || j.env.kind == kindUid && p.g.UidBroadcast {
			continue
		}
		var ns []string
		for _, m := range members[slices.Index(keys, j.route)] {
			id := ClientID(m)
			if inst := id.instance(); inst != "" && inst != p.g.instance && live[inst] && !contains(ns, inst) && !slices.Contains(j.env.exclude, id) {
				ns = append(ns, inst)
			}
		}
		if len(ns) == 0 {
			switch {
			case err != nil:
				p.g.stats.pubDropped.Add(1)
			case j.env.kind == kindUid:
				p.g.stats.unknown.Add(1)
			}
		}
		nodes[i] = ns
	}
	return nodes, live
}

func contains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// brokerTimeout bounds each call to the broker.
const brokerTimeout = 2 * time.Second

// flush publishes out (out[i] is for the job batch[from[i]]) and applies
// changes. A send to one client (SendToClient, CloseClient) or to a uid's
// nodes that no subscriber received went to the channels of processes
// that are gone: it is counted as an unknown target.
func (p *publisher) flush(batch []job, out []Outgoing, from []int, changes []PresenceChange) {
	ctx, cancel := context.WithTimeout(p.ctx, brokerTimeout)
	defer cancel()
	if len(changes) > 0 {
		if err := p.g.Broker.UpdatePresence(ctx, PresenceTTL, changes); err != nil {
			p.g.logger().Debug("gateway: presence update failed; the next refresh repeats it", "err", err)
		}
	}
	if len(out) > 0 {
		received, err := p.g.Broker.Publish(ctx, out)
		if err != nil {
			p.g.stats.pubDropped.Add(uint64(len(out)))
			p.g.logger().Debug("gateway: publish failed", "messages", len(out), "err", err)
			return
		}
		p.g.stats.published.Add(uint64(len(out)))
		if len(received) == len(out) {
			for i := 0; i < len(out); {
				j, reached := from[i], false
				for ; i < len(out) && from[i] == j; i++ {
					reached = reached || received[i] > 0
				}
				if k := batch[j].env.kind; !reached && (k == kindClient || k == kindClose || k == kindUid && !p.g.UidBroadcast) {
					p.g.stats.unknown.Add(1)
				}
			}
		}
	}
}

// refresh adds every local presence entry again, so that it outlives its
// TTL and is back after the broker lost it. The loops list their shards'
// entries; a loop that does not answer in time is refreshed next round.
func (p *publisher) refresh() {
	ctx, cancel := context.WithTimeout(p.ctx, brokerTimeout)
	changes, err := gather(ctx, p.g, func(s *shard) []PresenceChange {
		var mine []PresenceChange
		for _, r := range s.clients {
			mine = append(mine, PresenceChange{Key: nodeKey(p.g.instance), Member: string(r.id), In: true})
			for uid := range r.uids {
				mine = append(mine, PresenceChange{Key: uidKey(uid), Member: string(r.id), In: true})
			}
			for group := range r.groups {
				mine = append(mine, PresenceChange{Key: groupKey(group), Member: string(r.id), In: true})
			}
		}
		return mine
	})
	cancel()
	if err != nil {
		return
	}
	for len(changes) > 0 {
		n := min(len(changes), 4096)
		ctx, cancel := context.WithTimeout(p.ctx, brokerTimeout)
		err := p.g.Broker.UpdatePresence(ctx, PresenceTTL, changes[:n])
		cancel()
		if err != nil {
			return
		}
		changes = changes[n:]
	}
}

// receive handles one message from the broker (on the broker's goroutine):
// it checks the sender's numbering, then delivers on this node's loops.
func (p *publisher) receive(channel string, payload []byte) {
	g := p.g
	e, err := decodeEnvelope(payload)
	if err != nil {
		g.stats.malformed.Add(1)
		return
	}
	if e.node == g.node && e.epoch == p.epoch {
		return // our own, on the "all" channel (another incarnation of this node's name is another sender)
	}
	g.stats.received.Add(1)
	p.checkSeq(channel, &e)
	switch e.kind {
	case kindClient:
		// onClient checks the whole instance, incarnation included: a
		// client of another process of this name is not one of ours.
		m := newMessage(e.payload)
		g.onClient(ClientID(e.target), func(s *shard, r *record) { g.deliver(r, m) })
	case kindClose:
		g.onClient(ClientID(e.target), func(s *shard, r *record) { r.c.Herd().Close() })
	case kindUid:
		m := newMessage(e.payload)
		g.localAny(func(s *shard, v uint64) bool { return s.sendUid(e.target, m, v) }, g.stray)
	case kindGroup:
		m := newMessage(e.payload)
		ex := g.localExclusions(e.exclude)
		g.localAny(func(s *shard, v uint64) bool { return s.sendGroup(e.target, m, ex, v) }, g.stray)
	case kindAll:
		m := newMessage(e.payload)
		ex := g.localExclusions(e.exclude)
		g.local(func(s *shard, v uint64) { s.sendAll(m, ex, v) })
	case kindUngroup:
		g.local(func(s *shard, _ uint64) { s.ungroup(e.target) })
	}
}

// keptIncarnations bounds the incarnations of one node name whose
// numbering a receiver keeps: two live at once during an upgrade, the
// rest are gone (restarted), and forgetting one only means a gap in its
// numbering may go unnoticed.
const keptIncarnations = 4

// checkSeq counts the messages of e's sender on channel that never came.
// A sender is one incarnation of a node: two processes of one name (an
// upgrade) are numbered apart.
func (p *publisher) checkSeq(channel string, e *envelope) {
	key := seqKey{e.node, e.epoch, channel}
	if !slices.Contains(p.seen[e.node], e.epoch) {
		// A sender seen for the first time, or restarted: its numbering
		// starts here.
		incs := append(p.seen[e.node], e.epoch)
		if len(incs) > keptIncarnations {
			gone := incs[0]
			incs = incs[1:]
			for k := range p.last {
				if k.node == e.node && k.epoch == gone {
					delete(p.last, k)
				}
			}
		}
		p.seen[e.node] = incs
		p.last[key] = e.seq
		return
	}
	last, ok := p.last[key]
	p.last[key] = max(last, e.seq)
	if ok && e.seq > last+1 {
		missed := e.seq - last - 1
		p.g.stats.gaps.Add(1)
		p.g.stats.missed.Add(missed)
		if p.g.OnGap != nil {
			p.g.OnGap(e.node, missed)
		}
	}
}

// seqKey names one sender's numbering on one channel.
type seqKey struct {
	node    string
	epoch   uint64
	channel string
}
