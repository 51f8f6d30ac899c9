package balancer

import (
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	"github.com/seed358e4494/herd"
)

// backend is one server the balancer forwards to, with the state the
// pickers read. Fields set once at creation are plain; what changes while
// serving is atomic, since every loop picks and proxies.
type backend struct {
	addr   string
	weight int // configured weight, at least 1
	index  int // position in the balancer's list (stable while it lives)
	// hash is a hash of addr, for the source-hash picker: a backend's
	// identity, so that removing another one does not move its clients.
	hash   uint64
	dialer *herd.Dialer // for proxied connections

	// effWeight is the weight pickers use: weight, or less during slow
	// start after the backend came back up, 0 while down or draining.
	effWeight atomic.Int32
	// active counts open proxied connections (least connections, power of
	// two choices), and those being connected.
	active atomic.Int64

	down     atomic.Bool
	draining atomic.Bool
	// fails and passes count checks and connects in a row, for Fall and
	// Rise.
	fails, passes atomic.Int32
	upSince       atomic.Int64 // unix nanoseconds it last came up (slow start)
	downSince     atomic.Int64 // unix nanoseconds it went down; 0 while up
	downTotal     atomic.Int64 // nanoseconds spent down before downSince

	total, connectErrors, bytesIn, bytesOut, checksFailed atomic.Uint64
}

func (b *Balancer) newBackend(i int, cfg Backend) (*backend, error) {
	w := cfg.Weight
	if w == 0 {
		w = 1
	}
	be := &backend{addr: cfg.Addr, weight: w, index: i, hash: hashAddr([]byte(identity(cfg.Addr)))}
	timeout := b.ConnectTimeout
	if timeout == 0 {
		timeout = DefaultConnectTimeout
	}
	be.dialer = &herd.Dialer{
		Timeout:   timeout,
		OnConnect: b.connected,
		OnError: func(c *herd.Conn, err error) {
			if s, ok := c.Context().(*session); ok && s.dialing == c {
				b.dialFailed(s, be, err)
			}
		},
	}
	if err := herd.CheckDialAddr(cfg.Addr); err != nil {
		return nil, fmt.Errorf("balancer: backend: %w", err)
	}
	b.reweigh(be, 0)
	return be, nil
}

// identity is the address a backend is known by for source hashing,
// without its scheme.
func identity(addr string) string {
	if _, rest, ok := strings.Cut(addr, "://"); ok {
		return rest
	}
	return addr
}

// release takes one session out of the active count. Sessions enter and
// leave it once each (session.count and uncount), so it never goes below
// zero; if it did, least connections and power of two would send every
// new client to the backend that drifted, so the invariant is checked
// where it could break, not only in tests.
func (be *backend) release() {
	if n := be.active.Add(-1); n < 0 {
		panic(fmt.Sprintf("balancer: backend %s: active count %d (a session left it twice)", be.addr, n))
	}
}

// usable reports whether the backend takes new connections.
func (be *backend) usable() bool { return !be.down.Load() && !be.draining.Load() }

// connectOK notes a connect that succeeded: a backend in the middle of a
// run of failures is not failing after all.
func (be *backend) connectOK() {
	if be.fails.Load() != 0 {
		be.fails.Store(0)
	}
}

// State is a backend's health state.
type State string

const (
	Up       State = "up"
	Down     State = "down"
	Draining State = "draining" // up, taking no new connections
)

func (be *backend) state() State {
	switch {
	case be.down.Load():
		return Down
	case be.draining.Load():
		return Draining
	}
	return Up
}

// BackendStats are one backend's figures.
type BackendStats struct {
	Addr            string
	Weight          int
	EffectiveWeight float64 // Weight, less during slow start; 0 while down or draining
	State           State
	Active          int64  // proxied connections open now (or connecting)
	Total           uint64 // proxied connections it took (connected)
	BytesIn         uint64 // from clients to it
	BytesOut        uint64 // from it to clients
	ConnectErrors   uint64 // connects of proxied connections that failed
	ChecksFailed    uint64 // active checks that failed
	DownTime        time.Duration
}

// Stats are the balancer's figures, backends in the order configured.
type Stats struct {
	Backends []BackendStats
	// NoBackend counts clients closed because no backend could take them.
	NoBackend uint64
	// LocalErrors counts clients closed because this process could not
	// open a connection to a backend (out of descriptors or memory); they
	// count against no backend.
	LocalErrors uint64
}

// Stats returns the balancer's figures now. Safe from any goroutine.
func (b *Balancer) Stats() Stats {
	s := Stats{NoBackend: b.noServer.Load(), LocalErrors: b.localErrors.Load()}
	now := time.Now().UnixNano()
	for _, be := range b.backends {
		down := time.Duration(be.downTotal.Load())
		if since := be.downSince.Load(); since != 0 {
			down += time.Duration(now - since)
		}
		s.Backends = append(s.Backends, BackendStats{
			Addr:            be.addr,
			Weight:          be.weight,
			EffectiveWeight: float64(be.effWeight.Load()) / weightScale,
			State:           be.state(),
			Active:          be.active.Load(),
			Total:           be.total.Load(),
			BytesIn:         be.bytesIn.Load(),
			BytesOut:        be.bytesOut.Load(),
			ConnectErrors:   be.connectErrors.Load(),
			ChecksFailed:    be.checksFailed.Load(),
			DownTime:        down,
		})
	}
	return s
}

// SetDraining takes a backend out of the choice for new connections
// (true), while its open connections go on, or gives it back (false).
func (b *Balancer) SetDraining(addr string, on bool) error {
	for _, be := range b.backends {
		if be.addr == addr {
			be.draining.Store(on)
			b.reweigh(be, time.Now().UnixNano())
			return nil
		}
	}
	return fmt.Errorf("%w: %q", ErrNoBackend, addr)
}

// ErrNoBackend is returned, wrapped with the address, by SetDraining for an
// address that is none of the balancer's backends.
var ErrNoBackend = errors.New("balancer: no such backend")
