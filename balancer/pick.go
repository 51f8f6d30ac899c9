package balancer

import (
	"fmt"
	"math"
	"math/bits"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
)

// Algorithm names how a backend is chosen for a new connection. The
// names that herd's accept modes share are spelled as those are
// (round-robin, least-conns, as Stats.Mode shows them); HAProxy's
// spellings, roundrobin and leastconn, are taken as aliases.
//
// Every algorithm gives no new connection to a backend whose effective
// weight is 0 (or below), whatever the others' weights, RoundRobin
// included: 0 means "take no new connections", not "smallest share". If
// every usable backend is at 0, there is no pick.
type Algorithm string

const (
	// Random picks at random, in proportion to the weights.
	Random Algorithm = "random"
	// RoundRobin rotates through the backends, ignoring weights.
	RoundRobin Algorithm = "round-robin"
	// WeightedRoundRobin is nginx's smooth weighted round robin: shares
	// follow the weights exactly, and a heavy backend's turns are spread
	// out rather than given in a burst.
	WeightedRoundRobin Algorithm = "weighted"
	// LeastConns picks the backend with the fewest active connections per
	// unit of weight, counting half of the new one ((active+½)/weight);
	// ties rotate. It suits long-lived connections.
	LeastConns Algorithm = "least-conns"
	// SourceHash sends each client address to the same backend for as long
	// as the set of usable backends is unchanged (a consistent hash).
	SourceHash Algorithm = "source"
	// PowerOfTwo draws two backends at random in proportion to the weights
	// and takes the one with fewer active connections per unit of weight.
	PowerOfTwo Algorithm = "p2c"
)

var algorithms = []Algorithm{Random, RoundRobin, WeightedRoundRobin, LeastConns, SourceHash, PowerOfTwo}

// aliases are the other spellings taken for algorithms: HAProxy's.
var aliases = map[Algorithm]Algorithm{"roundrobin": RoundRobin, "leastconn": LeastConns}

// canonical is a's own name, a itself if it is no alias.
func (a Algorithm) canonical() Algorithm {
	if c, ok := aliases[a]; ok {
		return c
	}
	return a
}

// picker chooses among bs (the balancer's full list, in index order) a
// backend for which ok returns true (up, not draining, not already tried
// for this connection), or nil if none is. key is the client's address
// hash, used by SourceHash only.
//
// Every loop picks from its own goroutine, so pickers are safe for
// concurrent use and do not allocate. ok may be called more than once per
// backend and must be cheap.
type picker interface {
	pick(bs []*backend, key uint64, ok func(*backend) bool) *backend
}

// newPicker returns the picker for a.
func newPicker(a Algorithm) (picker, error) {
	switch a.canonical() {
	case Random:
		return randomPicker{src: runtimeSource{}}, nil
	case RoundRobin:
		return new(roundRobinPicker), nil
	case WeightedRoundRobin:
		return new(smoothPicker), nil
	case LeastConns:
		return new(leastConnsPicker), nil
	case SourceHash:
		return sourceHashPicker{}, nil
	case PowerOfTwo:
		return p2cPicker{src: runtimeSource{}}, nil
	}
	names := make([]string, len(algorithms))
	for i, a := range algorithms {
		names[i] = fmt.Sprintf("%q", a)
	}
	return nil, fmt.Errorf("balancer: unknown Algorithm %q (valid: %s; roundrobin and leastconn as aliases)", string(a), strings.Join(names, ", "))
}

// usable reports the weight b may be picked with, 0 if it may not be.
func usable(b *backend, ok func(*backend) bool) uint64 {
	w := b.effWeight.Load()
	if w <= 0 || !ok(b) {
		return 0
	}
	return uint64(w)
}

// runtimeSource is math/rand/v2's global generator: per-thread state, so
// concurrent loops neither contend nor allocate. Tests swap in a seeded
// source to get reproducible distributions.
type runtimeSource struct{}

func (runtimeSource) Uint64() uint64 { return rand.Uint64() }

// below returns a uniform number in [0, n), n > 0, without modulo bias
// (Lemire's multiply-and-reject).
func below(src rand.Source, n uint64) uint64 {
	hi, lo := bits.Mul64(src.Uint64(), n)
	if lo < n {
		thresh := -n % n
		for lo < thresh {
			hi, lo = bits.Mul64(src.Uint64(), n)
		}
	}
	return hi
}

// randomPicker does weighted random choice in one pass (weighted reservoir
// sampling: the i-th usable backend replaces the choice with probability
// w_i / (w_1+...+w_i)). One pass rather than sum-then-walk means ok is
// asked once per backend and a backend's health changing between two
// passes cannot leave the walk without a choice.
type randomPicker struct{ src rand.Source }

func (p randomPicker) pick(bs []*backend, _ uint64, ok func(*backend) bool) *backend {
	var chosen *backend
	var total uint64
	for _, b := range bs {
		w := usable(b, ok)
		if w == 0 {
			continue
		}
		total += w
		if chosen == nil || below(p.src, total) < w {
			chosen = b
		}
	}
	return chosen
}

// roundRobinPicker rotates through the backends. The fast path takes the
// next backend in turn; when that one cannot be used, its turn goes to the
// usable backends in a rotation of their own (the second counter). Giving
// the turn to the next usable backend in the list instead would double the
// load of a down backend's successor.
type roundRobinPicker struct {
	next     atomic.Uint64
	fallback atomic.Uint64
}

func (p *roundRobinPicker) pick(bs []*backend, _ uint64, ok func(*backend) bool) *backend {
	if len(bs) == 0 {
		return nil
	}
	if b := bs[(p.next.Add(1)-1)%uint64(len(bs))]; usable(b, ok) > 0 {
		return b
	}
	n := 0
	for _, b := range bs {
		if usable(b, ok) > 0 {
			n++
		}
	}
	if n == 0 {
		return nil
	}
	i := int((p.fallback.Add(1) - 1) % uint64(n))
	var last *backend
	for _, b := range bs {
		if usable(b, ok) > 0 {
			if i == 0 {
				return b
			}
			i--
			last = b
		}
	}
	return last // a backend went down between the two passes
}

// smoothPicker is nginx's smooth weighted round robin: every usable
// backend's current weight grows by its weight, the largest wins and pays
// back the total. Over a cycle each backend wins exactly its weight's share,
// interleaved (5,1,1 gives a a b a c a a, not a a a a a b c). The state is
// shared by all loops, hence the mutex; it is held for one pass over the
// list, ok calls included.
type smoothPicker struct {
	mu  sync.Mutex
	cur []smoothState // by backend index
}

type smoothState struct {
	b   *backend // whose state this is: a new backend at the index starts at 0
	cur int64
}

func (p *smoothPicker) pick(bs []*backend, _ uint64, ok func(*backend) bool) *backend {
	p.mu.Lock()
	defer p.mu.Unlock()
	best := -1
	var total int64
	for _, b := range bs {
		w := int64(usable(b, ok))
		if w == 0 {
			continue
		}
		if b.index >= len(p.cur) { // the list grew: allocate then, not per pick
			p.cur = append(p.cur, make([]smoothState, b.index+1-len(p.cur))...)
		}
		s := &p.cur[b.index]
		if s.b != b {
			*s = smoothState{b: b}
		}
		s.cur += w
		total += w
		if best < 0 || s.cur > p.cur[best].cur {
			best = b.index
		}
	}
	if best < 0 {
		return nil
	}
	p.cur[best].cur -= total
	return p.cur[best].b
}

// leastConnsPicker picks the backend whose active connections per unit of
// weight are lowest, counting half of the connection being placed:
// (active+½)/weight, Sainte-Laguë's divisors. With active/weight (nginx)
// every idle backend ties, so under light load the weights stop counting;
// (active+1)/weight (HAProxy) errs the other way, giving a heavy backend
// well over its share while few connections are open. The half is the
// unbiased middle: with connections that stay open each backend stays
// within about one connection of its share, and holds it exactly whenever
// the count is a multiple of the total weight. Any key of the load alone
// sends connections that never overlap to the same (heaviest) backend:
// least connections is for connections that last. Ties go to the first in
// a rotating scan order, so equal backends take turns.
type leastConnsPicker struct{ start atomic.Uint64 }

func (p *leastConnsPicker) pick(bs []*backend, _ uint64, ok func(*backend) bool) *backend {
	n := len(bs)
	if n == 0 {
		return nil
	}
	var best *backend
	var bestLoad, bestW uint64
	start := int((p.start.Add(1) - 1) % uint64(n))
	for i := range n {
		b := bs[(start+i)%n]
		w := usable(b, ok)
		if w == 0 {
			continue
		}
		load := 2*uint64(max(b.active.Load(), 0)) + 1 // twice active+½
		// load/w < bestLoad/bestW, without division.
		if best == nil || load*bestW < bestLoad*w {
			best, bestLoad, bestW = b, load, w
		}
	}
	return best
}

// sourceHashPicker is weighted rendezvous (highest random weight) hashing:
// every usable backend gets the score -w/ln(u), u uniform in (0,1) drawn
// from hash(key, backend), and the highest wins. A backend's score does
// not depend on the others, so a client moves only when its own backend
// stops being usable (and comes back when it returns), and a backend's
// chance to win is exactly w/Σw. Unlike a ring, nothing is rebuilt when
// health or slow-start weights change, which happens concurrently with
// picking; the price is O(N) per pick, a logarithm per backend, which is
// fine for lists of a few hundred.
type sourceHashPicker struct{}

func (sourceHashPicker) pick(bs []*backend, key uint64, ok func(*backend) bool) *backend {
	var best *backend
	bestScore := math.Inf(-1)
	for _, b := range bs {
		w := usable(b, ok)
		if w == 0 {
			continue
		}
		// 53 random bits, centred in their interval so u is never 0 or 1.
		u := (float64(mix64(key^b.hash)>>11) + 0.5) / (1 << 53)
		if s := -float64(w) / math.Log(u); s > bestScore {
			best, bestScore = b, s
		}
	}
	return best
}

// p2cPicker is the power of two choices: two independent weighted random
// draws (in one pass, as randomPicker), then the one with fewer active
// connections per weight. The draws may coincide (with probability Σp²);
// that only forgoes the comparison, never the weighting. On a tie the first
// draw wins, so with no load the shares are exactly the weights: comparing
// (active+1)/w as LeastConns does would favour the heavier draw and skew
// them.
type p2cPicker struct{ src rand.Source }

func (p p2cPicker) pick(bs []*backend, _ uint64, ok func(*backend) bool) *backend {
	var first, second *backend
	var firstW, secondW, total uint64
	for _, b := range bs {
		w := usable(b, ok)
		if w == 0 {
			continue
		}
		total += w
		if first == nil {
			first, second, firstW, secondW = b, b, w, w
			continue
		}
		if below(p.src, total) < w {
			first, firstW = b, w
		}
		if below(p.src, total) < w {
			second, secondW = b, w
		}
	}
	if first == second {
		return first
	}
	// active2/w2 < active1/w1, without division.
	if uint64(max(second.active.Load(), 0))*firstW < uint64(max(first.active.Load(), 0))*secondW {
		return second
	}
	return first
}

// hashAddr hashes a client IP (4 or 16 bytes) for SourceHash: FNV-1a, then
// a finalizer, since FNV alone leaves the high bits of short inputs poorly
// mixed. An IPv4-mapped IPv6 address hashes as the IPv4 address, so a
// client keeps its backend whichever form the listener reports.
func hashAddr(ip []byte) uint64 {
	if len(ip) == 16 && isV4Mapped(ip) {
		ip = ip[12:]
	}
	const (
		offset = 14695981039346656037
		prime  = 1099511628211
	)
	h := uint64(offset)
	for _, c := range ip {
		h ^= uint64(c)
		h *= prime
	}
	return mix64(h)
}

func isV4Mapped(ip []byte) bool {
	for _, c := range ip[:10] {
		if c != 0 {
			return false
		}
	}
	return ip[10] == 0xff && ip[11] == 0xff
}

// mix64 is MurmurHash3's 64-bit finalizer: a bijection whose every output
// bit depends on every input bit.
func mix64(x uint64) uint64 {
	x ^= x >> 33
	x *= 0xff51afd7ed558ccd
	x ^= x >> 33
	x *= 0xc4ceb9fe1a85ec53
	x ^= x >> 33
	return x
}
