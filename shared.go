//go:build linux || darwin || freebsd

package herd

import (
	"sync"
	"time"
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
//   - A loop that has not turned for stallCheck while not waiting (a
//     callback that runs long) does not count as watching: the loops aside
//     come back, and take what it leaves waiting.
//
// So a loop that fell ahead otherwise (Scale added loops; it dialed) takes
// at most one connection more before it steps aside.
//
// The cost is the lock below once per accepted connection (and per closed
// one in AcceptLeastConns), an epoll_ctl each time a loop steps aside or
// back, and a timer every stallCheck while a loop is aside.
type sharedAccept struct {
	byConns bool // AcceptLeastConns; else AcceptRoundRobin
	mu      sync.Mutex
	accs    []*acceptor // the acceptors of the loops serving; guarded by mu
	stall   *time.Timer // runs checkStall while a loop is aside; guarded by mu
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
	s.bringBackLocked()
}

// accepted runs on a's loop after it took a connection: a steps aside if
// it is ahead of another loop now (and another watches), and the loops
// aside that are at the fewest watch again. It reports false when a
// stepped aside: it accepts no more of this event.
func (s *sharedAccept) accepted(a *acceptor) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	a.turns++
	fewest, watching := s.bringBackLocked()
	if !a.watching() || s.key(a) <= fewest || watching < 2 {
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
	fewest, _ := s.bringBackLocked()
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

// stepAsideLocked stops b watching the socket, and starts the stall check.
func (s *sharedAccept) stepAsideLocked(b *acceptor) {
	b.aside.Store(true)
	b.poller.Delete(b.fd)
	if s.stall == nil {
		s.stall = time.AfterFunc(stallCheck, s.checkStall)
	}
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
// all of them when none watches. It returns the fewest and how many watch.
func (s *sharedAccept) bringBackLocked() (fewest int64, watching int) {
	fewest, watching = s.fewestLocked()
	none := watching == 0
	for _, b := range s.accs {
		// Aside, a loop is not resting: rest does nothing then.
		if b.aside.Load() && (s.key(b) <= fewest || none) && b.watch() == nil {
			b.aside.Store(false)
			watching++
		}
	}
	return fewest, watching
}

// checkStall runs every stallCheck while a loop is aside. A loop that
// watches and has neither turned since the last check nor waited for work
// is stalled: it does not count as watching, and when no other watches the
// loops aside come back.
func (s *sharedAccept) checkStall() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, b := range s.accs {
		turned := b.loop.wakeups.Load()
		b.stalled = b.watching() && turned == b.turned && !b.loop.sleeping.Load()
		b.turned = turned
	}
	s.bringBackLocked()
	for _, b := range s.accs {
		if b.aside.Load() || b.stalled {
			s.stall.Reset(stallCheck) // until the stalled have turned again
			return
		}
	}
	s.stall = nil
}

// watching reports whether a watches the socket now; under sharedAccept.mu.
func (a *acceptor) watching() bool { return !a.aside.Load() && !a.resting }

// leftShared runs when a connection left the loop.
func (l *Loop) leftShared() {
	if s := l.w.shared; s != nil && s.byConns {
		s.left(l)
	}
}
