package balancer

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"net"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/seed358e4494/herd"
)

const picks = 10000

func newBackends(weights ...int) []*backend {
	bs := make([]*backend, len(weights))
	for i, w := range weights {
		b := &backend{addr: fmt.Sprintf("10.0.0.%d:80", i+1), weight: w, index: i}
		b.hash = hashAddr([]byte(b.addr))
		b.effWeight.Store(int32(w))
		bs[i] = b
	}
	return bs
}

func all(*backend) bool { return true }

func sumWeights(bs []*backend) int {
	s := 0
	for _, b := range bs {
		s += b.weight
	}
	return s
}

// seeded returns a picker whose randomness is reproducible, so that a
// distribution test gives the same figures on every run.
func seeded(a Algorithm) picker {
	src := rand.NewPCG(1, 2)
	switch a {
	case Random:
		return randomPicker{src: src}
	case PowerOfTwo:
		return p2cPicker{src: src}
	}
	p, err := newPicker(a)
	if err != nil {
		panic(err)
	}
	return p
}

// checkShares asserts that counts follow the weights. The bound is ±5% of
// the expected count, or four binomial standard deviations where that is
// wider: with 10,000 draws a 10% share has σ ≈ 3% of its expectation, so a
// flat ±5% would fail about one run in ten for a fair random picker.
func checkShares(t *testing.T, name string, bs []*backend, counts []int, n int) {
	t.Helper()
	total := float64(sumWeights(bs))
	var line []string
	for i, b := range bs {
		p := float64(b.weight) / total
		exp := float64(n) * p
		tol := max(0.05*exp, 4*math.Sqrt(float64(n)*p*(1-p)))
		dev := (float64(counts[i]) - exp) / exp
		line = append(line, fmt.Sprintf("w%d: %d (exp %.0f, %+.2f%%, bound ±%.1f%%)", b.weight, counts[i], exp, 100*dev, 100*tol/exp))
		if math.Abs(float64(counts[i])-exp) > tol {
			t.Errorf("%s: backend %d (weight %d) got %d picks, want %.0f ± %.0f", name, i, b.weight, counts[i], exp, tol)
		}
	}
	t.Logf("%s: %s", name, strings.Join(line, "; "))
}

func TestNewPicker(t *testing.T) {
	for _, a := range algorithms {
		if p, err := newPicker(a); err != nil || p == nil {
			t.Errorf("newPicker(%q) = %v, %v", a, p, err)
		}
	}
	_, err := newPicker("fastest")
	if err == nil {
		t.Fatal("newPicker(\"fastest\") succeeded")
	}
	for _, a := range algorithms {
		if !strings.Contains(err.Error(), string(a)) {
			t.Errorf("error %q does not list %q", err, a)
		}
	}
}

// TestAlgorithmNames: the algorithms herd's accept modes share are
// spelled as Stats.Mode shows those (the balancer wanted roundrobin and
// leastconn where the core printed round-robin and least-conns), and
// HAProxy's spellings are taken as aliases; SetDraining's error puts the
// balancer's prefix first.
func TestAlgorithmNames(t *testing.T) {
	if RoundRobin != Algorithm(herd.AcceptRoundRobin.String()) || LeastConns != Algorithm(herd.AcceptLeastConns.String()) {
		t.Fatalf("balancer %q and %q, core %q and %q", RoundRobin, LeastConns, herd.AcceptRoundRobin, herd.AcceptLeastConns)
	}
	for alias, want := range map[Algorithm]any{"roundrobin": new(roundRobinPicker), "leastconn": new(leastConnsPicker)} {
		p, err := newPicker(alias)
		if err != nil || reflect.TypeOf(p) != reflect.TypeOf(want) {
			t.Errorf("newPicker(%q) = %T, %v; want a %T", alias, p, err, want)
		}
	}
	b := &Balancer{Backends: []Backend{{Addr: "127.0.0.1:31001"}}, Algorithm: "leastconn"}
	if err := b.Attach(&herd.Worker{Addr: "tcp://127.0.0.1:0"}); err != nil {
		t.Fatalf("Attach with an alias: %v", err)
	}
	err := b.SetDraining("1.2.3.4:5", true)
	if want := `balancer: no such backend: "1.2.3.4:5"`; err == nil || err.Error() != want || !errors.Is(err, ErrNoBackend) {
		t.Fatalf("SetDraining on an unknown backend: %v; want %q", err, want)
	}
}

func TestWeightedShares(t *testing.T) {
	for _, a := range []Algorithm{Random, WeightedRoundRobin, PowerOfTwo} {
		bs := newBackends(1, 2, 3, 4)
		p := seeded(a)
		counts := make([]int, len(bs))
		for range picks {
			// Released at once (active stays 0): P2C then follows the
			// weights alone.
			counts[p.pick(bs, 0, all).index]++
		}
		checkShares(t, string(a), bs, counts, picks)
		if a == WeightedRoundRobin {
			// Deterministic: exactly the weights.
			for i, b := range bs {
				if want := picks * b.weight / sumWeights(bs); counts[i] != want {
					t.Errorf("weighted: backend %d got %d, want exactly %d", i, counts[i], want)
				}
			}
		}
	}
}

// P2C with connections that stay open: the comparison balances active per
// weight, so shares follow the weights more tightly than a random draw.
func TestPowerOfTwoLongLived(t *testing.T) {
	bs := newBackends(1, 2, 3, 4)
	p := seeded(PowerOfTwo)
	for range picks {
		p.pick(bs, 0, all).active.Add(1)
	}
	counts := make([]int, len(bs))
	var line []string
	for i, b := range bs {
		counts[i] = int(b.active.Load())
		exp := picks * b.weight / sumWeights(bs)
		line = append(line, fmt.Sprintf("w%d: %d (exp %d)", b.weight, counts[i], exp))
		if d := counts[i] - exp; d < -exp/20 || d > exp/20 {
			t.Errorf("p2c long-lived: backend %d got %d, want %d ± 5%%", i, counts[i], exp)
		}
	}
	t.Logf("p2c long-lived: %s", strings.Join(line, "; "))
}

func TestRoundRobinEven(t *testing.T) {
	bs := newBackends(1, 2, 3, 4) // weights ignored
	p := seeded(RoundRobin)
	counts := make([]int, len(bs))
	for i := range picks {
		b := p.pick(bs, 0, all)
		if b.index != i%len(bs) {
			t.Fatalf("pick %d: got backend %d, want %d", i, b.index, i%len(bs))
		}
		counts[b.index]++
	}
	t.Logf("roundrobin: %v", counts)
	for i, c := range counts {
		if c != picks/len(bs) {
			t.Errorf("backend %d got %d, want %d", i, c, picks/len(bs))
		}
	}

	// A backend that cannot be used hands its turns to the others evenly,
	// not all to its successor.
	clear(counts)
	down := func(b *backend) bool { return b.index != 1 }
	for range 12000 {
		counts[p.pick(bs, 0, down).index]++
	}
	t.Logf("roundrobin, backend 1 excluded, 12000 picks: %v", counts)
	for i, c := range counts {
		want := 4000
		if i == 1 {
			want = 0
		}
		if c != want {
			t.Errorf("backend %d got %d, want %d", i, c, want)
		}
	}
}

// Connections that stay open: active counts are the cumulative picks. Each
// backend's count is compared with its quota k·w/Σw after every pick k.
func TestLeastConnsLongLived(t *testing.T) {
	for _, weights := range [][]int{{1, 1, 1}, {1, 1, 1, 1}, {1, 2, 3, 4}, {3, 5, 7, 11, 13}, {1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, {1, 1, 1, 1, 10}, {1, 100}} {
		bs := newBackends(weights...)
		total := sumWeights(bs)
		p := seeded(LeastConns)
		worst := 0.0 // largest |active - quota| seen
		for k := 1; k <= picks; k++ {
			p.pick(bs, 0, all).active.Add(1)
			for _, b := range bs {
				quota := float64(k*b.weight) / float64(total)
				worst = max(worst, math.Abs(float64(b.active.Load())-quota))
			}
		}
		counts := make([]int64, len(bs))
		for i, b := range bs {
			counts[i] = b.active.Load()
			if picks%total == 0 && counts[i] != int64(picks*b.weight/total) {
				t.Errorf("weights %v: backend %d has %d, want exactly %d", weights, i, counts[i], picks*b.weight/total)
			}
		}
		t.Logf("leastconn weights %v: %v after %d picks; worst |active-quota| %.3f", weights, counts, picks, worst)
		// Equal weights: never more than one apart. The bound of 1.5 for
		// uneven weights is what Sainte-Laguë gives a very heavy backend
		// among light ones early on (1,1,1,1,10: 4 of the first 4, quota
		// 2.86).
		bound := 1.5
		if slices.Min(weights) == slices.Max(weights) {
			bound = 1
		}
		if worst >= bound {
			t.Errorf("weights %v: a backend strayed %.3f from its quota, want < %v", weights, worst, bound)
		}
	}
}

// With no load every backend ties; ties rotate rather than all going to
// the first.
func TestLeastConnsTiesRotate(t *testing.T) {
	bs := newBackends(1, 1, 1, 1)
	p := seeded(LeastConns)
	counts := make([]int, len(bs))
	for range picks {
		counts[p.pick(bs, 0, all).index]++
	}
	t.Logf("leastconn, no load: %v", counts)
	for i, c := range counts {
		if c != picks/len(bs) {
			t.Errorf("backend %d got %d, want %d", i, c, picks/len(bs))
		}
	}
}

func TestSmoothSequence(t *testing.T) {
	bs := newBackends(5, 1, 1)
	p := seeded(WeightedRoundRobin)
	var got strings.Builder
	for range 14 {
		got.WriteByte("abc"[p.pick(bs, 0, all).index])
	}
	if want := "aabacaa" + "aabacaa"; got.String() != want {
		t.Errorf("sequence %s, want %s", got.String(), want)
	}
}

// clientKeys hashes 10,000 distinct client addresses.
func clientKeys() []uint64 {
	keys := make([]uint64, picks)
	for i := range keys {
		keys[i] = hashAddr(net.IPv4(10, byte(i>>16), byte(i>>8), byte(i)).To4())
	}
	return keys
}

func TestSourceHashStableAndWeighted(t *testing.T) {
	bs := newBackends(1, 2, 3, 4)
	p := seeded(SourceHash)
	counts := make([]int, len(bs))
	for _, k := range clientKeys() {
		b := p.pick(bs, k, all)
		for range 3 {
			if again := p.pick(bs, k, all); again != b {
				t.Fatalf("key %x: picked %d then %d", k, b.index, again.index)
			}
		}
		counts[b.index]++
	}
	checkShares(t, "source", bs, counts, picks)
}

func TestSourceHashRemoval(t *testing.T) {
	for _, weights := range [][]int{{1, 1, 1, 1, 1}, {1, 2, 3, 4, 5}} {
		bs := newBackends(weights...)
		p := seeded(SourceHash)
		keys := clientKeys()
		before := make([]*backend, len(keys))
		for i, k := range keys {
			before[i] = p.pick(bs, k, all)
		}
		for _, gone := range bs {
			ok := func(b *backend) bool { return b != gone }
			moved := 0
			for i, k := range keys {
				after := p.pick(bs, k, ok)
				switch {
				case after == gone:
					t.Fatalf("key picked the removed backend")
				case before[i] == gone:
					moved++
				case after != before[i]:
					t.Fatalf("weights %v, removing %d: key %x moved from %d to %d", weights, gone.index, k, before[i].index, after.index)
				}
			}
			// The removed backend's clients are exactly those that move:
			// its share of the weight.
			p := float64(gone.weight) / float64(sumWeights(bs))
			exp := picks * p
			tol := max(0.05*exp, 4*math.Sqrt(picks*p*(1-p)))
			t.Logf("source weights %v, backend %d removed: %d of %d keys moved (%.2f%%, its weight share %.2f%%)",
				weights, gone.index, moved, picks, 100*float64(moved)/picks, 100*p)
			if math.Abs(float64(moved)-exp) > tol {
				t.Errorf("weights %v, removing %d: %d keys moved, want %.0f ± %.0f", weights, gone.index, moved, exp, tol)
			}
		}
	}
}

func TestOkFilter(t *testing.T) {
	for _, a := range algorithms {
		t.Run(string(a), func(t *testing.T) {
			bs := newBackends(1, 2, 3, 4, 5)
			bs[3].effWeight.Store(0) // slow start at zero: no new connections
			p := seeded(a)
			ok := func(b *backend) bool { return b.index != 1 }
			for i := range 1000 {
				b := p.pick(bs, uint64(i)*0x9e3779b97f4a7c15, ok)
				if b == nil || b.index == 1 || b.index == 3 {
					t.Fatalf("picked %v", b)
				}
			}
			none := func(*backend) bool { return false }
			if b := p.pick(bs, 1, none); b != nil {
				t.Errorf("all excluded: picked %d", b.index)
			}
			for _, b := range bs {
				b.effWeight.Store(0)
			}
			if b := p.pick(bs, 1, all); b != nil {
				t.Errorf("all at weight 0: picked %d", b.index)
			}
			if b := p.pick(nil, 1, all); b != nil {
				t.Errorf("empty list: picked %d", b.index)
			}
		})
	}
}

func TestConcurrentPicks(t *testing.T) {
	for _, a := range algorithms {
		t.Run(string(a), func(t *testing.T) {
			bs := newBackends(1, 2, 3, 4, 5)
			p, err := newPicker(a)
			if err != nil {
				t.Fatal(err)
			}
			var down atomic.Int32 // index of a backend flapping down, -1 none
			down.Store(-1)
			ok := func(b *backend) bool { return int32(b.index) != down.Load() }
			stop := make(chan struct{})
			var flapper sync.WaitGroup
			flapper.Add(1)
			go func() {
				defer flapper.Done()
				for i := 0; ; i++ {
					select {
					case <-stop:
						return
					default:
					}
					down.Store(int32(i%6) - 1)
					bs[i%5].effWeight.Store(int32(i % 3)) // slow start
				}
			}()
			var wg sync.WaitGroup
			for g := range 8 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					held := make([]*backend, 0, 16)
					for i := range 2000 {
						b := p.pick(bs, uint64(g*2000+i), ok)
						if b == nil {
							continue // every usable backend can be at weight 0
						}
						b.active.Add(1)
						held = append(held, b)
						if len(held) == cap(held) {
							for _, h := range held {
								h.active.Add(-1)
							}
							held = held[:0]
						}
					}
					for _, h := range held {
						h.active.Add(-1)
					}
				}()
			}
			wg.Wait()
			close(stop)
			flapper.Wait()
			for _, b := range bs {
				if n := b.active.Load(); n != 0 {
					t.Errorf("backend %d: %d active left", b.index, n)
				}
			}
		})
	}
}

func TestPickAllocs(t *testing.T) {
	for _, a := range algorithms {
		bs := newBackends(1, 2, 3, 4, 5)
		p, err := newPicker(a)
		if err != nil {
			t.Fatal(err)
		}
		ok := func(b *backend) bool { return b.index != 2 }
		key := uint64(0)
		if n := testing.AllocsPerRun(1000, func() {
			key++
			p.pick(bs, key, ok)
		}); n != 0 {
			t.Errorf("%s: %v allocations per pick", a, n)
		}
	}
}

func TestHashAddr(t *testing.T) {
	v4 := net.IPv4(192, 0, 2, 1)
	if hashAddr(v4.To4()) != hashAddr(v4.To16()) {
		t.Error("IPv4 and IPv4-mapped IPv6 hash differently")
	}
	if hashAddr(net.IPv4(192, 0, 2, 1).To4()) == hashAddr(net.IPv4(192, 0, 2, 2).To4()) {
		t.Error("neighbouring addresses collide")
	}
	if hashAddr(net.ParseIP("2001:db8::1")) == hashAddr(net.ParseIP("2001:db8::2")) {
		t.Error("neighbouring IPv6 addresses collide")
	}
}
