//go:build linux || darwin || freebsd

package herd

// How connections reach loops: the listen modes, the one path by which a
// connection is accepted or turned away (shared by the loops and the
// dispatcher), and the dispatcher.

import (
	"errors"
	"strconv"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/seed358e4494/herd/internal/poll"
	"github.com/seed358e4494/herd/internal/sock"
)

// AcceptMode chooses how connections reach loops when ReusePort is off (or
// unavailable: Unix sockets, and platforms whose kernel does not balance
// SO_REUSEPORT groups, where ReusePort falls back to AcceptShared).
type AcceptMode int

const (
	// AcceptShared registers one listening socket in every loop's poller;
	// whichever loop the kernel wakes accepts. On Linux the registration
	// uses EPOLLEXCLUSIVE so one loop wakes per connection instead of all.
	// The kernel alone would favour the loop that registered first; so a
	// loop that holds more connections than another steps aside (stops
	// watching the socket) until the others catch up, and the loops' open
	// connections stay within one of each other, for long-lived
	// connections too. No hand-off, no dispatcher.
	AcceptShared AcceptMode = iota
	// AcceptRoundRobin accepts on one dispatcher goroutine and hands each
	// connection to the next loop in turn. Even for any connection pattern,
	// at the cost of one hand-off per connection.
	AcceptRoundRobin
	// AcceptLeastConns is like AcceptRoundRobin but hands each connection to
	// the loop with the fewest open connections: the right choice for a few
	// long-lived connections (WebSocket, game sessions).
	AcceptLeastConns

	// acceptReusePort is ReusePort as resolved: a listener per loop.
	acceptReusePort AcceptMode = -1
)

func (m AcceptMode) String() string {
	switch m {
	case acceptReusePort:
		return "reuseport"
	case AcceptShared:
		return "shared"
	case AcceptRoundRobin:
		return "round-robin"
	case AcceptLeastConns:
		return "least-conns"
	}
	return "AcceptMode(" + strconv.Itoa(int(m)) + ")"
}

// dispatched reports whether a dispatcher hands connections to the loops.
func (m AcceptMode) dispatched() bool { return m == AcceptRoundRobin || m == AcceptLeastConns }

// restPeriod is how long a listener rests after accept ran out of
// descriptors: a level-triggered listener would otherwise spin its loop.
const restPeriod = 50 * time.Millisecond

// maxAcceptBatch bounds the accepts of one listener event of a loop.
const maxAcceptBatch = 64

// acceptor takes connections from one listening socket, for a loop
// (ReusePort, AcceptShared) or for the dispatcher, and hands each admitted
// one to take.
type acceptor struct {
	w         *Worker
	loop      *Loop // nil for the dispatcher
	fd        int   // the listening socket; -1: none (dispatched loops, or stopped)
	datagram  bool  // a udp:// worker's socket: receive datagrams, not connections
	poller    *poll.Poller
	exclusive bool   // registered with EPOLLEXCLUSIVE
	owner     string // for logs: "loop 3", "dispatcher"
	buf       sock.AcceptBuf
	take      func(fd int, peer *sock.Peer)
	empty     *atomic.Uint64 // counts events that found no connection

	// batch is how many accepts one event tries; 0: until the queue is
	// empty (the dispatcher, which has nothing else to do). A loop's
	// shrinks to what the last burst held and grows after four full
	// batches in a row, so that connections arriving one at a time cost few
	// accepts that find the queue empty, and bursts few wake-ups.
	batch, full int
	resting     bool // unwatched after running out of descriptors

	// shared balances AcceptShared's loops (nil in the other modes); aside
	// says the loop stepped aside from the listener. A shared acceptor's
	// registration (resting, aside) changes under shared.mu only.
	shared *sharedAccept
	aside  atomic.Bool
}

// watch registers the listener with the poller.
func (a *acceptor) watch() error { return a.poller.AddListener(a.fd, a.exclusive) }

// accept accepts what one listener event offers. It reports whether it ran
// out of descriptors, in which case the listener rests: the caller calls
// resume after restPeriod.
func (a *acceptor) accept() (rested bool) {
	if a.datagram {
		a.receive()
		return false
	}
	if a.aside.Load() {
		return false // reported before the loop stepped aside
	}
	n := 0
	for a.batch == 0 || n < a.batch {
		fd, peer, err := sock.Accept(a.fd, &a.buf)
		if err != nil {
			if err == unix.EAGAIN {
				if n == 0 {
					a.empty.Add(1)
				} else if a.batch > 0 {
					a.batch, a.full = n, 0
				}
				return false
			}
			n++
			if acceptTemporary(err) {
				continue
			}
			if acceptExhausted(err) {
				return a.rest(err)
			}
			a.w.logger().Warn("herd: accept", "at", a.owner, "err", err)
			return false
		}
		n++
		if a.w.admit(fd) {
			a.take(fd, &peer)
			if a.shared != nil && !a.shared.accepted(a) {
				return false
			}
		}
	}
	if a.full++; a.full >= 4 {
		a.batch, a.full = min(2*a.batch, maxAcceptBatch), 0
	}
	return false
}

// restWarnEvery is the least time between two warnings of accepts paused
// for want of resources.
const restWarnEvery = 5 * time.Second

// rest stops watching the listener: out of descriptors, accept fails at
// once and a level-triggered listener would spin.
func (a *acceptor) rest(err error) bool {
	if a.resting {
		return false
	}
	// Logged at most every restWarnEvery per worker, with the rests since:
	// while descriptors stay short, every loop rests every restPeriod.
	rests := a.w.rests.Add(1)
	now := time.Now().UnixNano()
	if last := a.w.restWarned.Load(); now-last >= int64(restWarnEvery) && a.w.restWarned.CompareAndSwap(last, now) {
		a.w.logger().Warn("herd: accept: out of resources; pausing accepts", "at", a.owner, "for", restPeriod, "err", err, "rests", rests-a.w.restsWarned.Swap(rests))
	}
	if a.shared != nil {
		a.shared.mu.Lock()
		defer a.shared.mu.Unlock()
	}
	if a.aside.Load() || a.poller.Delete(a.fd) != nil {
		return false
	}
	a.resting = true
	return true
}

// resume watches the listener again after a rest.
func (a *acceptor) resume() {
	if a.shared != nil {
		a.shared.mu.Lock()
		defer a.shared.mu.Unlock()
	}
	if a.resting && a.fd >= 0 {
		a.resting = false
		if !a.aside.Load() {
			a.watch()
		}
	}
}

// stop stops watching the listener for good; the last acceptor to stop
// closes the worker's listening sockets.
func (a *acceptor) stop() {
	if a.fd < 0 {
		return
	}
	if a.shared != nil {
		a.shared.leave(a)
	} else if !a.resting {
		a.poller.Delete(a.fd)
	}
	a.fd = -1
	a.w.releaseListener()
}

// admit counts a new connection against MaxConns, closing it when over.
func (w *Worker) admit(fd int) bool {
	n := w.conns.Add(1)
	if w.MaxConns > 0 && n > int64(w.MaxConns) {
		w.conns.Add(-1)
		w.rejected.Add(1)
		sock.Close(fd)
		return false
	}
	return true
}

// acceptTemporary reports accept errors after which the listener is fine and
// the next connection may be accepted at once.
func acceptTemporary(err error) bool {
	return errors.Is(err, unix.ECONNABORTED) || errors.Is(err, unix.EINTR) || errors.Is(err, unix.EPROTO)
}

// acceptExhausted reports accept errors that say the process or system is out
// of descriptors or memory: the listener must rest or the loop spins.
func acceptExhausted(err error) bool {
	return errors.Is(err, unix.EMFILE) || errors.Is(err, unix.ENFILE) || errors.Is(err, unix.ENOBUFS) || errors.Is(err, unix.ENOMEM)
}

// dispatcher accepts on one goroutine and hands connections to loops
// (AcceptRoundRobin, AcceptLeastConns).
type dispatcher struct {
	w            *Worker
	acc          acceptor
	loops        atomic.Pointer[[]*Loop] // the loops to hand to (Scale changes them)
	next         int
	stopped      atomic.Bool
	exited       chan struct{}
	emptyAccepts atomic.Uint64
}

func newDispatcher(w *Worker, fd int) (*dispatcher, error) {
	p, err := poll.New(1)
	if err != nil {
		return nil, err
	}
	d := &dispatcher{w: w, exited: make(chan struct{})}
	d.acc = acceptor{w: w, fd: fd, poller: p, owner: "dispatcher", take: d.handOff, empty: &d.emptyAccepts}
	if err := d.acc.watch(); err != nil {
		p.Close()
		return nil, err
	}
	return d, nil
}

func (d *dispatcher) stop() {
	if d.stopped.CompareAndSwap(false, true) {
		d.acc.poller.Wake()
	}
}

func (d *dispatcher) run() {
	defer close(d.exited)
	defer d.acc.stop()
	var events []poll.Event
	timeout := -1
	for !d.stopped.Load() {
		var err error
		events, err = d.acc.poller.Wait(timeout, events)
		if err != nil {
			d.w.fail(err)
			return
		}
		if timeout >= 0 && len(events) == 0 {
			d.acc.resume() // the rest is over
			timeout = -1
		}
		for _, ev := range events {
			if !ev.Wake && d.acc.accept() {
				timeout = int(restPeriod / time.Millisecond)
			}
		}
	}
}

func (d *dispatcher) setLoops(loops []*Loop) {
	loops = append([]*Loop(nil), loops...)
	d.loops.Store(&loops)
}

// handOff gives an accepted connection to the loop the policy picks. A
// loop that Scale took away after the pick no longer takes it: pick again
// among those that stay.
func (d *dispatcher) handOff(fd int, peer *sock.Peer) {
	for range 4 {
		l := d.pick()
		l.active.Add(1) // counted now, so least-conns sees it before the loop does
		if l.post(task{kind: taskConn, fd: fd, peer: *peer}) {
			return
		}
		l.active.Add(-1)
	}
	d.w.conns.Add(-1) // the worker stops
	sock.Close(fd)
}

// pick chooses the loop for the next connection.
func (d *dispatcher) pick() *Loop {
	loops := *d.loops.Load()
	start := d.next % len(loops)
	d.next = (start + 1) % len(loops)
	if d.w.mode == AcceptRoundRobin {
		return loops[start]
	}
	best := loops[start]
	for i := 1; i < len(loops); i++ {
		l := loops[(start+i)%len(loops)]
		if l.active.Load() < best.active.Load() {
			best = l
		}
	}
	return best
}
