//go:build linux || darwin || freebsd

package herd

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/seed358e4494/herd/internal/sock"
)

// sharedAccept spreads connections over the loops that share one listening
// socket, for AcceptLeastConns (by the connections each loop holds) and
// AcceptRoundRobin (by the connections each has taken).
//
// Every loop registers the socket (with EPOLLEXCLUSIVE on Linux) and the
// kernel wakes one waiting loop per connection: not a fair one, as it
// prefers the loop that registered first. So a loop ahead of another steps
// aside: it stops watching the socket. The kernel then picks among the
// loops that watch, still only among those waiting for work. Nothing is
// handed from one goroutine to another: the loop that accepts a connection
// serves it. (Before this, a dispatcher goroutine accepted and handed each
// connection over, at one more thread wake-up per connection.)
//
// Three rules keep a connection from waiting with nobody to take it:
//   - A loop steps aside after an accept, on its own goroutine. The
//     kernel gives each connection's wake-up to one loop; a loop stepped
//     aside by another may lose one it was given. The one exception is a
//     loop whose connection closed in AcceptLeastConns: it steps aside
//     the loops now ahead of it, and then accepts what waits itself.
//   - Any loop may bring one back: a registration looks at the socket's
//     state, so nothing is lost that way.
//   - A check every stallCheck while a loop is aside: a loop that watches
//     and has neither turned since the last check nor waited for work (a
//     callback that runs long) does not count as watching, and the loops
//     aside come back when none else watches. When every loop that watches
//     sleeps, a connection waiting in the queue means a wake-up was lost
//     (a kernel may give one connection's wake-up to a loop it woke for
//     another, before it runs): the loops aside come back. An idle server
//     pays nothing: the check parks until a loop next wakes.
//
// So a loop that fell ahead otherwise (Scale added loops; it dialed) takes
// at most one connection more before it steps aside.
//
// The cost is the lock below once per accepted connection (and per closed
// one in AcceptLeastConns), an epoll_ctl each time a loop steps aside or
// back, an atomic load per loop turn, and the check every stallCheck while
// a loop is aside and another is awake, or a loop is stalled.
type sharedAccept struct {
	byConns bool // AcceptLeastConns; else AcceptRoundRobin
	mu      sync.Mutex
	accs    []*acceptor // the acceptors of the loops serving; guarded by mu
	stall   *time.Timer // runs checkStall while a loop is aside; guarded by mu
	parked  atomic.Bool // the check stopped with loops aside, all others asleep
	waited  bool        // at the last check a connection waited, every watcher asleep; guarded by mu
	// uneven counts the checks that let the loops fall apart: a loop
	// found stalled, or a wake-up lost (read by the distribution tests).
	uneven atomic.Uint64
}

// stallCheck is how long a loop may stay busy without turning before the
// loops aside take the connections it would have taken.
const stallCheck = 20 * time.Millisecond

// key is what the loops are evened by.
func (s *sharedAccept) key(a *acceptor) int64 {
	if s.byConns {
		return a.loop.active.Load()
	}
	return a.turns
}

// join adds the acceptors of loops about to start, all before any starts
// (before, one would take connections alone). A loop added by Scale starts
// its turns at the fewest, not at zero, so that it does not take every
// connection until it has caught up. Nothing for a nil s: the other modes.
func (s *sharedAccept) join(loops []*Loop) {
	if s == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	turns := int64(0)
	if len(s.accs) > 0 {
		turns, _ = s.fewestLocked()
	}
	for _, l := range loops {
		for _, a := range l.accs {
			a.turns = turns
			s.accs = append(s.accs, a)
		}
	}
}

// leave stops a's watching for good, on a's loop; the loops aside that are
// at the fewest now watch instead.
func (s *sharedAccept) leave(a *acceptor) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !a.aside.Load() && !a.resting {
		a.poller.Delete(a.fd)
	}
	for i, b := range s.accs {
		if b == a {
			s.accs = append(s.accs[:i], s.accs[i+1:]...)
			break
		}
	}
	s.bringBackLocked(false)
	if len(s.accs) == 0 && s.stall != nil {
		s.stall.Stop()
		s.stall = nil
	}
}

// accepted runs on a's loop after it took a connection: a steps aside if
// it is ahead of another loop now (and another watches), and the loops
// aside that are at the fewest watch again. It reports false when a
// stepped aside: it accepts no more of this event.
func (s *sharedAccept) accepted(a *acceptor) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	a.turns++
	if a.stalled {
		s.unstallLocked(a)
	}
	fewest, watching := s.bringBackLocked(false)
	if !a.watching() {
		return false // another loop stepped it aside: it takes no more
	}
	if s.key(a) <= fewest || watching < 2 {
		return true
	}
	s.stepAsideLocked(a)
	return false
}

// left runs on l when one of its connections left it (AcceptLeastConns):
// the loops aside at the fewest come back, and when l is at the fewest, the
// loops that watch ahead of it step aside. It accepts, at the end of the
// turn, what they may have been woken for.
func (s *sharedAccept) left(l *Loop) {
	s.mu.Lock()
	fewest, _ := s.bringBackLocked(false)
	var own *acceptor
	stepped := false
	for _, b := range s.accs {
		if b.loop == l {
			own = b
		}
	}
	if own != nil && own.watching() && s.key(own) <= fewest {
		for _, b := range s.accs {
			if b != own && b.watching() && s.key(b) > fewest {
				s.stepAsideLocked(b)
				stepped = true
			}
		}
	}
	s.mu.Unlock()
	if stepped {
		l.post(task{kind: taskFunc, f: own.acceptWaitingFn})
	}
}

// stepAsideLocked stops b watching the socket, and starts the check.
func (s *sharedAccept) stepAsideLocked(b *acceptor) {
	b.aside.Store(true)
	b.poller.Delete(b.fd)
	s.armLocked()
}

// armLocked starts the check if it is not running. The first compares
// each loop's turns with now, not with the last check's.
func (s *sharedAccept) armLocked() {
	s.parked.Store(false)
	if s.stall != nil {
		return
	}
	for _, b := range s.accs {
		b.turned = b.loop.wakeups.Load()
	}
	s.stall = time.AfterFunc(stallCheck, s.checkStall)
}

// woke runs on a loop that woke while the check is parked.
func (s *sharedAccept) woke() {
	s.mu.Lock()
	if s.parked.Load() {
		s.armLocked()
	}
	s.mu.Unlock()
}

// unstallLocked counts a stalled loop as watching again. In round robin,
// what the others took meanwhile is not owed to it: its turns start again
// from the fewest of theirs.
func (s *sharedAccept) unstallLocked(a *acceptor) {
	a.stalled = false
	if !s.byConns {
		a.turns = max(a.turns, s.fewestOthersLocked(a))
	}
}

// fewestOthersLocked is the smallest key of the loops other than a that
// are not stalled.
func (s *sharedAccept) fewestOthersLocked(a *acceptor) int64 {
	fewest := int64(-1)
	for _, b := range s.accs {
		if k := s.key(b); b != a && !b.stalled && (fewest < 0 || k < fewest) {
			fewest = k
		}
	}
	return max(fewest, 0)
}

// fewestLocked is the smallest key, and how many loops watch (not counting
// those found stalled).
func (s *sharedAccept) fewestLocked() (fewest int64, watching int) {
	fewest = -1
	for _, b := range s.accs {
		if k := s.key(b); fewest < 0 || k < fewest {
			fewest = k
		}
		if b.watching() && !b.stalled {
			watching++
		}
	}
	return fewest, watching
}

// bringBackLocked has the loops aside that are at the fewest watch again
// (from any goroutine: a loop's poller takes registrations from any), and
// all of them when none watches or all is set. It returns the fewest and
// how many watch.
func (s *sharedAccept) bringBackLocked(all bool) (fewest int64, watching int) {
	fewest, watching = s.fewestLocked()
	none := watching == 0 || all
	for _, b := range s.accs {
		// Aside, a loop is not resting: rest does nothing then.
		if b.aside.Load() && (s.key(b) <= fewest || none) && b.watch() == nil {
			b.aside.Store(false)
			watching++
		}
	}
	return fewest, watching
}

// checkStall runs every stallCheck while a loop is aside or stalled. A
// loop that watches and has neither turned since the last check nor waited
// for work is stalled: it does not count as watching until it turns or
// sleeps again, and when no other watches the loops aside come back. When
// every loop that watches sleeps, the check parks, unless a connection
// waits: a wake-up in flight, or, if one still waits at the next check,
// lost; then the loops aside come back.
func (s *sharedAccept) checkStall() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stall != nil { // else stopped as the last loop left
		s.checkStallLocked()
	}
}

func (s *sharedAccept) checkStallLocked() {
	aside, awake := false, false
	for _, b := range s.accs {
		turned, sleeping := b.loop.wakeups.Load(), b.loop.sleeping.Load()
		if b.stalled && (turned != b.turned || sleeping) {
			s.unstallLocked(b)
		}
		stalled := b.watching() && turned == b.turned && !sleeping
		if stalled && !b.stalled {
			s.uneven.Add(1)
		}
		b.stalled = stalled
		b.turned = turned
		aside = aside || b.aside.Load()
		awake = awake || (b.watching() && !sleeping)
	}
	waited := s.waited
	s.waited = aside && !awake && len(s.accs) > 0 && sock.Ready(s.accs[0].fd)
	if waited && s.waited {
		s.uneven.Add(1)
	}
	s.bringBackLocked(waited && s.waited)
	aside, stalled := false, false
	for _, b := range s.accs {
		aside = aside || b.aside.Load()
		stalled = stalled || b.stalled
	}
	if aside && (awake || s.waited) || stalled {
		s.stall.Reset(stallCheck)
		return
	}
	s.stall = nil
	if !aside {
		s.parked.Store(false)
		return
	}
	s.parked.Store(true) // a loop that wakes starts the check again
	// A watcher that woke after its sleeping was read above may have
	// looked at parked before the store: look again (both atomics).
	for _, b := range s.accs {
		if b.watching() && (b.loop.wakeups.Load() != b.turned || !b.loop.sleeping.Load()) {
			s.armLocked()
			return
		}
	}
}

// watching reports whether a watches the socket now; under sharedAccept.mu.
func (a *acceptor) watching() bool { return !a.aside.Load() && !a.resting }

// sharedTurn runs each time the loop wakes: a parked check starts again,
// as this loop may now run long.
func (l *Loop) sharedTurn() {
	if s := l.w.shared; s != nil && s.parked.Load() {
		s.woke()
	}
}

// leftShared runs when a connection left the loop.
func (l *Loop) leftShared() {
	if s := l.w.shared; s != nil && s.byConns {
		s.left(l)
	}
}
