//go:build linux || darwin || freebsd

package herd

// Changing the number of loops while serving: loops that join, loops that
// leave, and how a leaving loop's listeners and connections reach the
// loops that stay without a peer noticing.

import (
	"context"
	"errors"
	"fmt"

	"github.com/seed358e4494/herd/internal/poll"
	"golang.org/x/sys/unix"
)

// ErrBadCount is returned by Scale for a count below 1.
var ErrBadCount = errors.New("herd: Scale needs at least one loop")

// Scale changes the number of loops to n while the worker serves, in every
// listen mode, and returns once the change is done (or ctx ends; the change
// then completes in the background).
//
// Growing starts loops numbered from the current count up; each runs
// OnWorkerStart and takes a share of new connections: with ReusePort a
// listener of the group (one a loop that left had kept, or a new one), in
// the other modes the shared listener or the dispatcher's hand-offs.
//
// Shrinking takes the highest-numbered loops away, and no peer notices:
// each leaving loop first hands its listening sockets to a loop that stays
// (the socket, not a new one, so connections waiting in its accept queue
// are accepted there, not reset), then hands every open connection to the
// staying loop with the fewest, with its send queue, unread input and
// pending work; a Handler that keeps per-loop state moves it (LoopMover).
// Connections already closing finish on the leaving loop, which then runs
// OnWorkerStop and exits. Timers the application set on a leaving loop
// (AfterFunc, Every) stop with it: OnWorkerStop is where to set them
// again elsewhere.
//
// Loop numbers are stable: a loop keeps its Index while it lives, and
// Stats lists the loops of the moment (LoopsAdded and LoopsRemoved count
// the changes). Calls to Scale are serialized. It returns ErrBadCount for
// n < 1, and ErrWorkerClosed when the worker is not running, is stopping,
// or has handed its listeners to an upgrade. Scale waits for the loops, so
// a callback must not call it directly: use go w.Scale(ctx, n).
func (w *Worker) Scale(ctx context.Context, n int) error {
	if n < 1 {
		return fmt.Errorf("%w (got %d)", ErrBadCount, n)
	}
	w.scaleMu.Lock()
	defer w.scaleMu.Unlock()
	w.mu.Lock()
	serving, cur, mode := w.servingLocked(), len(w.loops), w.mode
	w.mu.Unlock()
	switch {
	case !serving:
		return ErrWorkerClosed
	case n > cur:
		var spare []int
		if mode == acceptReusePort {
			// Without w.mu: the loops answer on their own goroutines, and
			// a callback of theirs may be waiting for w.mu (Stats).
			spare = w.reclaimListeners()
		}
		w.mu.Lock()
		defer w.mu.Unlock()
		if !w.servingLocked() {
			return ErrWorkerClosed // the listeners taken back close with the worker
		}
		return w.growLocked(n, spare)
	case n < cur:
		return w.shrink(ctx, n)
	}
	return nil
}

// shrink takes the loops numbered n and up away (see Scale).
func (w *Worker) shrink(ctx context.Context, n int) error {
	w.mu.Lock()
	if !w.servingLocked() {
		w.mu.Unlock()
		return ErrWorkerClosed
	}
	cur := len(w.loops)
	leaving := w.loops[n:]
	staying := w.loops[:n:n]
	w.loops = staying
	w.departing = append(w.departing, leaving...)
	w.count = n
	w.loopsRemoved.Add(uint64(len(leaving)))
	if w.disp != nil {
		w.disp.setLoops(staying)
	}
	w.mu.Unlock()
	w.logger().Info("herd: scaling down", "from", cur, "to", n)
	for _, l := range leaving {
		l.post(task{kind: taskFunc, f: func() { l.leave(staying) }})
	}
	for i, l := range leaving {
		select {
		case <-l.exited:
			w.departed(l)
		case <-ctx.Done():
			go func() {
				for _, l := range leaving[i:] {
					<-l.exited
					w.departed(l)
				}
			}()
			return ctx.Err()
		}
	}
	return nil
}

// departed forgets a loop that left and has exited.
func (w *Worker) departed(l *Loop) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for i, d := range w.departing {
		if d == l {
			w.departing = append(w.departing[:i], w.departing[i+1:]...)
			break
		}
	}
	if w.state != stateClosed {
		l.poller.Close() // else teardown closed it
	}
}

// servingLocked reports whether the worker runs and is not stopping: loops
// may then be added or taken away. Called with w.mu held.
func (w *Worker) servingLocked() bool {
	if w.state != stateRunning || w.runErr != nil || w.handedOver {
		return false
	}
	select {
	case <-w.stopping:
		return false
	default:
		return true
	}
}

// growLocked starts loops up to n. With ReusePort, the listeners spare
// (taken back from loops that kept them for loops that left) go to the new
// ones first; only the missing ones are opened. Called with w.mu held, the
// worker serving.
func (w *Worker) growLocked(n int, spare []int) error {
	cur := len(w.loops)
	added := make([]*Loop, 0, n-cur)
	fail := func(err error) error {
		for _, l := range added {
			l.poller.Close()
		}
		// Listeners taken back go to the loops that stay.
		for i, fd := range spare {
			l := w.loops[i%cur]
			w.listenRefs.Add(1)
			if !l.Post(func() { l.adoptListener(fd) }) {
				w.listenRefs.Add(-1)
			}
		}
		return err
	}
	for i := cur; i < n; i++ {
		l, err := newLoop(w, i)
		if err != nil {
			return fail(err)
		}
		added = append(added, l)
		switch {
		case w.mode == acceptReusePort:
			fd := -1
			if len(spare) > 0 {
				fd, spare = spare[0], spare[1:]
			} else if fd, err = listen(w.ep, true); err != nil {
				l.poller.Close()
				added = added[:len(added)-1]
				return fail(err)
			} else {
				w.listeners = append(w.listeners, fd)
			}
			if err := l.addListener(fd, false); err != nil {
				spare = append(spare, fd)
				return fail(err)
			}
		case w.mode == AcceptShared:
			if err := l.addListener(w.listeners[0], w.exclusive); err != nil {
				return fail(err)
			}
		}
	}
	// More listeners than loops (a loop that left kept one the kernel
	// still hashes to): spread them.
	for i, fd := range spare {
		l := added[i%len(added)]
		if err := l.addListener(fd, false); err != nil {
			w.logger().Warn("herd: scale: watch listener", "loop", l.index, "err", err)
		}
	}
	for _, l := range added {
		w.listenRefs.Add(int32(len(l.accs)))
		w.start(l)
	}
	w.loops = append(w.loops, added...)
	w.count = n
	w.loopsAdded.Add(uint64(len(added)))
	if w.disp != nil {
		w.disp.setLoops(w.loops)
	}
	w.logger().Info("herd: scaled up", "from", cur, "to", n)
	return nil
}

// reclaimListeners takes back, from each loop holding more than one
// ReusePort listener, all but its first, and returns them. The sockets stay
// open meanwhile: what arrives waits in their accept queues.
func (w *Worker) reclaimListeners() []int {
	var got []int
	for _, l := range w.loops {
		ch := make(chan []int, 1)
		if !l.Post(func() { ch <- l.releaseListeners(1) }) {
			continue
		}
		got = append(got, <-ch...)
	}
	return got
}

// releaseListeners stops watching all of the loop's listeners but the
// first keep, and returns their descriptors (still open).
func (l *Loop) releaseListeners(keep int) []int {
	if len(l.accs) <= keep {
		return nil
	}
	var fds []int
	for _, a := range l.accs[keep:] {
		if !a.resting {
			l.poller.Delete(a.fd)
		}
		fds = append(fds, a.fd)
		a.fd = -1
		l.w.listenRefs.Add(-1) // the loop that takes it counts it again
	}
	l.accs = l.accs[:keep]
	return fds
}

// leave takes the loop out of the worker (Scale): its listeners and open
// connections go to the heirs, connections already closing finish here, and
// the loop exits once they have (as a stopping loop does, without closing
// anything that is still open).
func (l *Loop) leave(heirs []*Loop) {
	if l.draining {
		return // the worker stops; the stop closes everything
	}
	l.heirs = heirs
	l.draining = true
	for i, a := range l.accs {
		if l.w.mode != acceptReusePort {
			a.stop() // the listener is shared: the heirs watch it already
			continue
		}
		if !a.resting {
			l.poller.Delete(a.fd)
		}
		fd := a.fd
		a.fd = -1
		h := heirs[i%len(heirs)]
		// The listening socket, and its accept queue, pass on whole.
		if !h.Post(func() { h.adoptListener(fd) }) {
			l.w.releaseListener()
		}
	}
	l.accs = nil
	for _, c := range l.conns {
		if c != nil && c.state.Load() == connOpen && !c.lingerListed {
			to := leastActive(heirs)
			if b := c.pipedTo(); b != nil && b.Loop() != l {
				to = b.Loop() // a pipe's two connections stay together
			}
			l.handOver(c, to)
		}
	}
}

// adoptListener takes over a ReusePort listener a leaving loop watched.
func (l *Loop) adoptListener(fd int) {
	if l.draining {
		l.w.releaseListener()
		return
	}
	if err := l.addListener(fd, false); err != nil {
		l.w.logger().Warn("herd: scale: watch listener", "loop", l.index, "err", err)
		l.w.releaseListener()
	}
}

// leastActive is the loop with the fewest open connections.
func leastActive(loops []*Loop) *Loop {
	best := loops[0]
	for _, l := range loops[1:] {
		if l.active.Load() < best.active.Load() {
			best = l
		}
	}
	return best
}

// handOver gives an open connection to loop to. Every task posted for it
// from now on reaches to: taskMoved is posted before the connection's loop
// changes, under its lock, so it comes first there, and tasks that reach
// this loop afterwards are forwarded (see forward).
func (l *Loop) handOver(c *Conn, to *Loop) {
	if m, ok := c.h.(LoopMover); ok {
		l.callConn(m.LeaveLoop, c)
		if c.state.Load() != connOpen {
			return // LeaveLoop closed it
		}
	}
	if c.flags.Load()&flagConnecting != 0 {
		l.stopTimer(c.rare.dial.timer) // the loop it joins arms it again
	}
	c.mu.Lock()
	l.poller.Delete(int(c.fd))
	c.flags.Or(flagMoving)
	q := int64(c.queuedLocked())
	l.sendQueued.Add(-q)
	to.sendQueued.Add(q)
	to.active.Add(1)
	if !to.post(task{kind: taskMoved, c: c}) {
		// The worker stops: the connection stays and closes here.
		to.active.Add(-1)
		to.sendQueued.Add(-q)
		l.sendQueued.Add(q)
		c.flags.And(^flagMoving)
		c.readOn, c.writeOn = poll.EdgeTriggered, poll.EdgeTriggered // as Add registers it
		l.poller.Add(int(c.fd), false)
		c.updateInterestLocked()
		c.mu.Unlock()
		return
	}
	c.loop.Store(to)
	c.mu.Unlock()
	l.conns[c.fd] = nil
	l.nconns--
	l.active.Add(-1)
}

// moveIn takes on a connection a leaving loop handed over: it joins the
// poller with the interest it has now, and what was read but not yet
// delivered is delivered.
func (l *Loop) moveIn(c *Conn) {
	fd := int(c.fd)
	l.attach(c)
	c.drainedTurn = 0
	c.mu.Lock()
	c.flags.And(^flagMoving)
	c.readOn, c.writeOn = poll.EdgeTriggered, poll.EdgeTriggered // as Add registers it
	err := l.poller.Add(fd, false)
	switch {
	case err == nil && c.flags.Load()&flagConnecting != 0 && !poll.EdgeTriggered:
		err = l.poller.Modify(fd, false, true) // as connect registers it
	case err == nil:
		c.updateInterestLocked()
	}
	c.mu.Unlock()
	if err == nil && c.flags.Load()&flagConnecting != 0 {
		l.armConnectTimeout(c)
	}
	if err != nil {
		l.closeConn(c, fmt.Errorf("herd: scale: register moved connection: %w", err))
		return
	}
	if m, ok := c.h.(LoopMover); ok {
		l.callConn(m.JoinLoop, c)
	}
	if c.dropsPending.Load() > 0 {
		l.reportDrops(c) // its report may have been due on the loop that left
	}
	switch {
	case l.draining && l.heirs == nil:
		// The worker stops: the connection stops like the others.
		if !l.awaitRelease(c) {
			l.beginClose(c)
		}
	default:
		l.resumeInput(c) // what was read, or decrypted, before the move
	}
}

// forward passes on a task that is no longer this loop's: one for a
// connection that has moved to another loop, or a new connection handed to
// a loop that has left (Scale). It reports whether it did.
func (l *Loop) forward(t *task) bool {
	switch {
	case t.kind == taskMoved:
		return false
	case t.c != nil:
		if t.c.loop.Load() == l {
			return false
		}
		t.c.post(*t) // fails only once the worker has stopped
		return true
	case t.kind == taskConn && l.heirs != nil:
		h := leastActive(l.heirs)
		l.active.Add(-1)
		h.active.Add(1)
		if !h.post(*t) {
			h.active.Add(-1)
			l.w.conns.Add(-1)
			unix.Close(t.fd)
		}
		return true
	}
	return false
}
