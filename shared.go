//go:build linux || darwin || freebsd

package herd

import "sync"

// sharedAccept spreads connections over the loops that share one listening
// socket, for AcceptLeastConns (by the connections each loop holds) and
// AcceptRoundRobin (by the connections each has taken).
//
// Every loop registers the socket (with EPOLLEXCLUSIVE on Linux) and the
// kernel wakes one waiting loop per connection: not a fair one, as it
// prefers the loop that registered first. So a loop ahead of another steps
// aside: it stops watching the socket. The loops at the fewest watch it,
// and the kernel picks among those alone, still only among loops waiting
// for work. Nothing is handed from one goroutine to another: the loop that
// accepts a connection serves it. (Before this, a dispatcher goroutine
// accepted and handed each connection over, at one more thread wake-up per
// connection.)
//
// The cost is the lock below once per accepted connection (and per closed
// one in AcceptLeastConns), and an epoll_ctl each time a loop steps aside
// or back.
type sharedAccept struct {
	byConns bool // AcceptLeastConns; else AcceptRoundRobin
	mu      sync.Mutex
	accs    []*acceptor // the acceptors of the loops serving; guarded by mu
}

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
		turns = s.fewestLocked()
	}
	for _, l := range loops {
		for _, a := range l.accs {
			a.turns = turns
			s.accs = append(s.accs, a)
		}
	}
}

// leave stops a's watching for good; a loop aside may have to watch again
// for the one that leaves.
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
	s.balanceLocked()
}

// accepted runs on a's loop after it took a connection. It reports false
// when the loop stepped aside: it accepts no more of this event.
func (s *sharedAccept) accepted(a *acceptor) bool {
	s.mu.Lock()
	a.turns++
	s.balanceLocked()
	s.mu.Unlock()
	return !a.aside.Load()
}

// left runs on a loop when one of its connections left it (AcceptLeastConns):
// the others step aside if it holds fewer now.
func (s *sharedAccept) left() {
	s.mu.Lock()
	s.balanceLocked()
	s.mu.Unlock()
}

func (s *sharedAccept) fewestLocked() int64 {
	fewest := int64(-1)
	for _, b := range s.accs {
		if n := s.key(b); fewest < 0 || n < fewest {
			fewest = n
		}
	}
	return fewest
}

// balanceLocked has the loops at the fewest watch the socket, and the
// others step aside. (A loop's poller takes registrations from any
// goroutine; a loop that stepped aside ignores an event it was given
// before.)
func (s *sharedAccept) balanceLocked() {
	fewest := s.fewestLocked()
	watching := 0
	for _, b := range s.accs {
		if b.aside.Load() && s.key(b) <= fewest {
			b.aside.Store(false)
			if !b.resting {
				b.watch()
			}
		}
		if !b.aside.Load() && !b.resting {
			watching++
		}
	}
	// Counts move meanwhile (a connection closes on another loop), and a
	// loop at the fewest may be resting: never leave none watching.
	for _, b := range s.accs {
		if watching > 1 && !b.aside.Load() && !b.resting && s.key(b) > fewest {
			b.aside.Store(true)
			b.poller.Delete(b.fd)
			watching--
		}
	}
}

// leftShared runs when a connection left the loop.
func (l *Loop) leftShared() {
	if s := l.w.shared; s != nil && s.byConns {
		s.left()
	}
}
