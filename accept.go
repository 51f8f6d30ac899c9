//go:build linux || darwin || freebsd

package herd

// How connections reach loops: the listen modes, and the one path by which
// a loop accepts a connection or turns it away. (shared.go keeps the loops
// even in the balanced modes.)

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
	// Cheapest per connection, but uneven: the kernel wakes the first loop,
	// in the order they registered, that is waiting, so a few loops may
	// take most connections.
	AcceptShared AcceptMode = iota
	// AcceptRoundRobin is AcceptShared with turns: a loop that has taken a
	// connection steps aside (stops watching the socket) until every loop
	// has taken one, so each takes one connection per round.
	AcceptRoundRobin
	// AcceptLeastConns is AcceptShared kept even: a loop that holds more
	// open connections than another steps aside until the others catch up,
	// so the loops' connections stay within one of each other. (A loop
	// that falls ahead without accepting, as Scale adds loops or as it
	// dials, takes at most one more before it steps aside.) The right
	// choice for long-lived connections (WebSocket, game sessions), where a
	// hash or the kernel's preference is blind to load.
	//
	// In both balanced modes a loop that stays in a callback (see the
	// threading rule) stops counting after 20 to 40 ms: the loops that
	// stepped aside take new connections meanwhile.
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

// balanced reports whether the loops take turns at a shared socket.
func (m AcceptMode) balanced() bool { return m == AcceptRoundRobin || m == AcceptLeastConns }

// restPeriod is how long a listener rests after accept ran out of
// descriptors: a level-triggered listener would otherwise spin its loop.
const restPeriod = 50 * time.Millisecond

// maxAcceptBatch bounds the accepts of one listener event of a loop.
const maxAcceptBatch = 64

// acceptor takes connections from one listening socket for a loop, and
// hands each admitted one to take.
type acceptor struct {
	w         *Worker
	loop      *Loop
	fd        int  // the listening socket; -1: stopped
	datagram  bool // a udp:// worker's socket: receive datagrams, not connections
	poller    *poll.Poller
	exclusive bool   // registered with EPOLLEXCLUSIVE
	owner     string // for logs: "loop 3"
	buf       sock.AcceptBuf
	peer      sock.Peer // the connection being taken
	take      func(fd int, peer *sock.Peer)
	empty     *atomic.Uint64 // counts events that found no connection

	// batch is how many accepts one event tries. It shrinks to what the
	// last burst held and grows after four full batches in a row, so that
	// connections arriving one at a time cost few accepts that find the
	// queue empty, and bursts few wake-ups.
	batch, full int
	resting     bool // unwatched after running out of descriptors

	// shared balances the loops in AcceptRoundRobin and AcceptLeastConns
	// (nil in the other modes); aside says the loop stepped aside from the
	// listener, turns counts its connections in AcceptRoundRobin, stalled
	// and turned are the stall check's. Under shared.mu: those, and any
	// change of resting or aside.
	shared          *sharedAccept
	aside           atomic.Bool
	turns           int64
	stalled         bool
	turned          uint64
	acceptWaitingFn func() // acceptWaiting, made once
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
	n, rested, drained := a.acceptUpTo(a.batch)
	switch {
	case drained && n == 0:
		a.empty.Add(1)
	case drained:
		a.batch, a.full = n, 0
	case n == a.batch:
		if a.full++; a.full >= 4 {
			a.batch, a.full = min(2*a.batch, maxAcceptBatch), 0
		}
	}
	return rested
}

// acceptWaiting takes what waits in the listener's queue, without an event
// (sharedAccept: connections other loops may have been woken for).
func (a *acceptor) acceptWaiting() {
	if a.fd < 0 || a.loop.draining || a.aside.Load() {
		return
	}
	if _, rested, _ := a.acceptUpTo(maxAcceptBatch); rested {
		a.loop.addTimer(restPeriod, 0, a.resume)
	}
}

// acceptUpTo accepts up to limit connections: n tried, whether the
// listener must rest, whether the queue was found empty.
func (a *acceptor) acceptUpTo(limit int) (n int, rested, drained bool) {
	for n < limit {
		fd, peer, err := sock.Accept(a.fd, &a.buf)
		if err != nil {
			if err == unix.EAGAIN {
				return n, false, true
			}
			n++
			if acceptTemporary(err) {
				continue
			}
			if acceptExhausted(err) {
				return n, a.rest(err), false
			}
			a.w.logger().Warn("herd: accept", "at", a.owner, "err", err)
			return n, false, false
		}
		n++
		if a.w.admit(fd) {
			a.peer = peer // passed by pointer to take: a local would escape, an allocation per connection
			a.take(fd, &a.peer)
			if a.shared != nil && !a.shared.accepted(a) {
				break // stepped aside
			}
		}
	}
	return n, false, false
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
