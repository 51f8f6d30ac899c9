//go:build linux || darwin || freebsd

package herd

import "sync"

// sharedAccept spreads AcceptShared's connections evenly over the loops.
//
// Every loop registers the one listening socket (with EPOLLEXCLUSIVE on
// Linux), and the kernel wakes one waiting loop per connection: not a fair
// one, as it prefers the loop that registered first. So a loop that holds
// more connections than another steps aside: it stops watching the socket.
// Loops at the fewest watch it. The kernel then picks among those alone,
// and still only among loops that are waiting for work, as before. Over
// long-lived connections the loops end within one of each other, as with
// AcceptLeastConns, without a dispatcher's hand-off.
//
// The cost is the lock below once per accepted connection, and an
// epoll_ctl each time a loop steps aside or back (only when the counts
// cross). Nothing here runs for reuseport or the dispatch modes.
type sharedAccept struct {
	mu   sync.Mutex
	accs []*acceptor // one per loop that accepts; guarded by mu
}

// join adds a loop's acceptor (addListener), watching.
func (s *sharedAccept) join(a *acceptor) {
	s.mu.Lock()
	s.accs = append(s.accs, a)
	s.mu.Unlock()
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
	s.balanceLocked()
	s.mu.Unlock()
	return !a.aside.Load()
}

// left runs on a loop when one of its connections left it: the others
// step aside if it holds fewer now.
func (s *sharedAccept) left() {
	s.mu.Lock()
	s.balanceLocked()
	s.mu.Unlock()
}

// balanceLocked has the loops that hold the fewest connections watch the
// socket, and the others step aside. (A loop's poller takes registrations
// from any goroutine; one that stepped aside ignores an event it had been
// given already.)
func (s *sharedAccept) balanceLocked() {
	fewest := int64(-1)
	for _, b := range s.accs {
		if n := b.loop.active.Load(); fewest < 0 || n < fewest {
			fewest = n
		}
	}
	watching := 0
	for _, b := range s.accs {
		if b.aside.Load() && b.loop.active.Load() <= fewest {
			b.aside.Store(false)
			if !b.resting {
				b.watch()
			}
		}
		if !b.aside.Load() && !b.resting {
			watching++
		}
	}
	// Counts move meanwhile: one that sank below fewest is watching; one
	// kept back (resting) must not leave none.
	for _, b := range s.accs {
		if watching > 1 && !b.aside.Load() && !b.resting && b.loop.active.Load() > fewest {
			b.aside.Store(true)
			b.poller.Delete(b.fd)
			watching--
		}
	}
}

// leftShared runs when a connection left the loop.
func (l *Loop) leftShared() {
	l.w.shared.left()
}
