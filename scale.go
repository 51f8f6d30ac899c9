//go:build linux || darwin || freebsd

package herd

// Changing the number of loops while serving: loops that join, loops that
// leave, and how a leaving loop's listeners and connections reach the
// loops that stay without a peer noticing.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/seed358e4494/herd/internal/poll"
	"github.com/seed358e4494/herd/internal/sock"
)

// Errors returned by Scale.
var (
	// ErrBadCount is returned by Scale for a count below 1.
	ErrBadCount = errors.New("herd: Scale needs at least one loop")
	// ErrNotRunning is returned by Scale and Handover before Run has
	// started the loops.
	ErrNotRunning = errors.New("herd: worker not running yet")
	// ErrLent is returned by Scale and Handover while a Handover of the
	// worker's listening sockets is open (neither committed nor rolled
	// back).
	ErrLent = errors.New("herd: the listening sockets are lent to another process (Handover open)")
	// ErrHandoverOnLoop is returned by Handover called on one of the
	// worker's loops: its Commit waits for them.
	ErrHandoverOnLoop = errors.New("herd: Handover called on one of the worker's loops, which its Commit waits for; call it from another goroutine")
	// ErrScaleOnLoop is returned by Scale called on one of the worker's
	// loops (from a callback): Scale waits for the loops, that one
	// included. Call it from another goroutine: go w.Scale(ctx, n).
	ErrScaleOnLoop = errors.New("herd: Scale called on one of the worker's loops, which it waits for; call it from another goroutine")
)

// Scale changes the number of loops to n while the worker serves, in every
// listen mode, and returns once the change is done (or ctx ends; the change
// then completes in the background).
//
// Growing starts loops numbered from the current count up; each runs
// OnWorkerStart and takes a share of new connections: with ReusePort a
// listener of the group (one a loop that left had kept, or a new one), in
// the other modes the shared listener (in the balanced modes a new loop
// starts at the fewest connections taken, and catches up on those held). A
// grow that fails (out of descriptors, say) leaves the worker as it was:
// what it opened is closed, and Scale returns the error.
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
// With ReusePort on Linux the worker steers its SO_REUSEPORT group (a
// classic BPF program, SO_ATTACH_REUSEPORT_CBPF, set again on each Scale):
// new connections go to one socket per loop serving, at random, so they
// spread evenly over the loops whatever the history; the sockets loops
// that left had stay open in the group, watched by the loops that stay,
// and get nothing new. Without steering (FreeBSD, JoinReusePort, udp://)
// the kernel hashes over every socket of the group, and a loop holding two
// takes twice the share.
//
// Loop numbers are stable: a loop keeps its Index while it lives, and
// Stats lists the loops of the moment (LoopsAdded and LoopsRemoved count
// the changes). Calls to Scale are serialized. It returns ErrBadCount for
// n < 1, ErrNotRunning before Run, ErrWorkerClosed when the worker is
// stopping, has stopped, or has handed its listeners to an upgrade,
// ErrLent while a Handover is open, and ErrScaleOnLoop, at once, when
// called on one of the worker's loops.
func (w *Worker) Scale(ctx context.Context, n int) error {
	if n < 1 {
		return fmt.Errorf("%w (got %d)", ErrBadCount, n)
	}
	if w.sc.onLoop() {
		// Checked before scaleMu: a Scale under way may be waiting for
		// this very loop.
		return ErrScaleOnLoop
	}
	w.scaleMu.Lock()
	defer w.scaleMu.Unlock()
	w.mu.Lock()
	st, serving, lent, cur := w.state, w.servingLocked(), w.lent, len(w.loops)
	w.mu.Unlock()
	switch {
	case st == stateNew || st == stateListening:
		return ErrNotRunning
	case !serving:
		return ErrWorkerClosed
	case lent:
		return ErrLent
	}
	if err := w.awaitDeparting(ctx); err != nil {
		return fmt.Errorf("herd: scale to %d: loops an earlier Scale took away are still leaving: %w", n, err)
	}
	switch {
	case n > cur:
		return w.grow(n)
	case n < cur:
		return w.shrink(ctx, n)
	}
	return nil
}

// scaleState is what Scale keeps beside the worker's loops.
type scaleState struct {
	// Under the worker's mu.
	steered bool        // the worker steers its ReusePort group: loop i's first listener is listeners[i]
	retired []LoopStats // by Index: the counters of loops that left and exited
	base    []fairBase  // by Index: where the loops serving stood at since
	since   time.Time   // when the loops last changed

	gmu sync.Mutex
	byG map[uint64]*Loop // the worker's loop goroutines, by goroutine id
}

// onGoroutine records that the calling goroutine runs l, until the
// returned function is called.
func (s *scaleState) onGoroutine(l *Loop) func() {
	g := goroutineID()
	s.gmu.Lock()
	if s.byG == nil {
		s.byG = make(map[uint64]*Loop)
	}
	s.byG[g] = l
	s.gmu.Unlock()
	return func() {
		s.gmu.Lock()
		delete(s.byG, g)
		s.gmu.Unlock()
	}
}

// onLoop reports whether the caller runs on one of the worker's loops.
func (s *scaleState) onLoop() bool {
	g := goroutineID()
	s.gmu.Lock()
	defer s.gmu.Unlock()
	_, ok := s.byG[g]
	return ok
}

// goroutineID is the calling goroutine's id, from the first line of its
// stack ("goroutine 18 [running]:"). Go offers no cheaper way, and Scale
// asks once per call.
func goroutineID() uint64 {
	var buf [32]byte
	b := buf[:runtime.Stack(buf[:], false)]
	b = bytes.TrimPrefix(b, []byte("goroutine "))
	if i := bytes.IndexByte(b, ' '); i > 0 {
		b = b[:i]
	}
	n, _ := strconv.ParseUint(string(b), 10, 64)
	return n
}

// steerAtStart steers a ReusePort group over the loops Run starts, where
// the kernel can. Called with w.mu held.
func (w *Worker) steerAtStart() {
	w.sc.since = time.Now()
	if w.mode != acceptReusePort || w.ep.network != "tcp" || w.JoinReusePort {
		return // udp:// keeps the kernel's hash: a sender's datagrams stay on one loop
	}
	if err := sock.SteerGroup(w.listeners[0], len(w.loops)); err != nil {
		w.logger().Info("herd: cannot steer the SO_REUSEPORT group; after Scale a loop holding several sockets takes a larger share", "err", err)
		return
	}
	w.sc.steered = true
}

// resteer steers the group over this worker's loops again: a new process
// of an upgrade that failed may have steered it, through the sockets it
// shares, over its own count of loops.
func (w *Worker) resteer() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.sc.steered || !w.servingLocked() {
		return
	}
	if err := sock.SteerGroup(w.listeners[0], len(w.loops)); err != nil {
		w.logger().Warn("herd: steering the SO_REUSEPORT group again after a failed upgrade", "err", err)
	}
}

// markChangeLocked starts a new fairness window: the loops serving now,
// from their counts now. Called with w.mu held.
func (w *Worker) markChangeLocked() {
	rows := w.rowsLocked(w.loops, w.departing, w.sc.retired)
	w.sc.base = w.sc.base[:0]
	for _, r := range rows[:len(w.loops)] {
		w.sc.base = append(w.sc.base, fairBase{accepted: r.Accepted, messages: r.MessagesIn})
	}
	w.sc.since = time.Now()
}

// shrink takes the loops numbered n and up away (see Scale).
func (w *Worker) shrink(ctx context.Context, n int) error {
	w.mu.Lock()
	if !w.servingLocked() {
		w.mu.Unlock()
		return ErrWorkerClosed
	}
	if w.sc.steered {
		// First, so that the sockets of the loops that leave get nothing
		// new; what waits in them goes with them to the heirs.
		if err := sock.SteerGroup(w.listeners[0], n); err != nil {
			w.mu.Unlock()
			return fmt.Errorf("herd: scale to %d: %w", n, err)
		}
	}
	cur := len(w.loops)
	leaving := w.loops[n:]
	staying := w.loops[:n:n]
	w.loops = staying
	w.departing = append(w.departing, leaving...)
	w.count = n
	w.loopsRemoved.Add(uint64(len(leaving)))
	pos := make(map[int]int, len(w.listeners))
	for i, fd := range w.listeners {
		pos[fd] = i
	}
	w.markChangeLocked()
	w.mu.Unlock()
	w.logger().Info("herd: scaling down", "from", cur, "to", n)
	for _, l := range leaving {
		l.post(task{kind: taskFunc, f: func() { l.leave(staying, pos) }})
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

// awaitDeparting waits until the loops an earlier Scale took away have
// exited (that Scale returned when its context ended, and the change went
// on): until then they still hand their sockets over, and a grow would give
// one of those to a new loop as well.
func (w *Worker) awaitDeparting(ctx context.Context) error {
	w.mu.Lock()
	departing := slices.Clone(w.departing)
	w.mu.Unlock()
	for _, l := range departing {
		select {
		case <-l.exited:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// departed forgets a loop that left and has exited; its counters stay in
// its Index's row.
func (w *Worker) departed(l *Loop) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for i, d := range w.departing {
		if d == l {
			w.departing = append(w.departing[:i], w.departing[i+1:]...)
			break
		}
	}
	for len(w.sc.retired) <= l.index {
		w.sc.retired = append(w.sc.retired, LoopStats{Index: len(w.sc.retired)})
	}
	w.sc.retired[l.index] = w.sc.retired[l.index].plus(l.stats())
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

// heldListener is a ReusePort listener taken back from the loop that held
// it.
type heldListener struct {
	fd   int
	from *Loop
}

// grow starts loops up to n, or, on any error, leaves everything as it was
// and returns the error. With ReusePort each new loop gets a socket of the
// group: steered, loop i gets listeners[i] (kept by a loop that stays since
// a loop numbered i left) or a new one, which joins the group as number i;
// else the sockets loops that stay hold beyond their first, then new ones.
func (w *Worker) grow(n int) error {
	w.mu.Lock()
	cur, steered := len(w.loops), w.sc.steered
	staying := append([]*Loop(nil), w.loops...)
	listeners := append([]int(nil), w.listeners...)
	w.mu.Unlock()
	var (
		added []*Loop
		made  []int          // sockets opened, in the order they joined the group
		taken []heldListener // taken back from loops that stay
	)
	undo := func(err error) error {
		for _, l := range added {
			l.poller.Close()
		}
		// The last to join leaves first, so that the sockets before it
		// keep their place in the group (the kernel fills a gap with the
		// last one).
		for i := len(made) - 1; i >= 0; i-- {
			sock.Close(made[i])
		}
		for _, h := range taken {
			h.from.giveBack(h.fd)
		}
		return fmt.Errorf("herd: scale to %d: %w", n, err)
	}
	for i := cur; i < n; i++ {
		l, err := newLoop(w, i)
		if err != nil {
			return undo(err)
		}
		added = append(added, l)
	}
	switch w.mode {
	case acceptReusePort:
		pick := func(fd int) bool { return true }
		if steered {
			want := make(map[int]bool)
			for _, fd := range listeners[cur:min(n, len(listeners))] {
				want[fd] = true
			}
			pick = func(fd int) bool { return want[fd] }
		}
		taken = w.takeBack(staying, pick)
		var spare []int
		for _, h := range taken {
			spare = append(spare, h.fd)
		}
		for i, l := range added {
			fd := -1
			switch {
			case steered && cur+i < len(listeners):
				fd = listeners[cur+i]
			case !steered && len(spare) > 0:
				fd, spare = spare[0], spare[1:]
			default:
				var err error
				if fd, err = sock.Listen(w.ep.bind(), true); err != nil {
					return undo(err)
				}
				made = append(made, fd)
			}
			if err := l.addListener(fd, false); err != nil {
				return undo(err)
			}
		}
		if !steered {
			// More sockets than loops: the new loops watch them too.
			for i, fd := range spare {
				if err := added[i%len(added)].addListener(fd, false); err != nil {
					return undo(err)
				}
			}
		}
	default:
		for _, l := range added {
			if err := l.addListener(listeners[0], w.exclusive); err != nil {
				return undo(err)
			}
		}
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.servingLocked() {
		return undo(ErrWorkerClosed)
	}
	if steered {
		// Last: from now on the new sockets get connections, and the
		// loops that watch them are about to run.
		if err := sock.SteerGroup(listeners[0], n); err != nil {
			return undo(err)
		}
	}
	refs := -len(taken) // a socket taken back keeps the count it had
	for _, l := range added {
		refs += len(l.accs)
	}
	w.listenRefs.Add(int32(refs))
	w.listeners = append(w.listeners, made...)
	w.shared.join(added)
	for _, l := range added {
		w.start(l)
	}
	w.loops = append(w.loops, added...)
	w.count = n
	w.loopsAdded.Add(uint64(len(added)))
	w.markChangeLocked()
	w.logger().Info("herd: scaled up", "from", cur, "to", n)
	return nil
}

// takeBack takes from the loops the ReusePort listeners pick chooses among
// those each holds beyond its first. The sockets stay open meanwhile: what
// arrives waits in their accept queues.
func (w *Worker) takeBack(loops []*Loop, pick func(fd int) bool) []heldListener {
	var got []heldListener
	for _, l := range loops {
		ch := make(chan []int, 1)
		if !l.Post(func() { ch <- l.releaseListeners(pick) }) {
			continue
		}
		for _, fd := range <-ch {
			got = append(got, heldListener{fd: fd, from: l})
		}
	}
	return got
}

// giveBack returns a listener takeBack took, to the loop it came from.
func (l *Loop) giveBack(fd int) {
	if !l.Post(func() { l.adoptListener(fd) }) {
		l.w.releaseListener() // stopped: it counts the socket no more
	}
}

// releaseListeners stops watching the listeners beyond the loop's first
// that pick chooses, and returns their descriptors (still open, and still
// counted in listenRefs: the loop that takes one over counts it).
func (l *Loop) releaseListeners(pick func(fd int) bool) []int {
	if len(l.accs) <= 1 {
		return nil
	}
	var fds []int
	keep := l.accs[:1]
	for _, a := range l.accs[1:] {
		if !pick(a.fd) {
			keep = append(keep, a)
			continue
		}
		if !a.resting {
			l.poller.Delete(a.fd)
		}
		fds = append(fds, a.fd)
		a.fd = -1
	}
	clear(l.accs[len(keep):])
	l.accs = keep
	return fds
}

// leave takes the loop out of the worker (Scale): its listeners and open
// connections go to the heirs, connections already closing finish here, and
// the loop exits once they have (as a stopping loop does, without closing
// anything that is still open).
// A listener goes to the heir its place in the group (pos) picks, so that
// the sockets spread over the heirs.
func (l *Loop) leave(heirs []*Loop, pos map[int]int) {
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
		if p, ok := pos[fd]; ok {
			h = heirs[p%len(heirs)]
		}
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
	l.movedOut.Add(1)
	to.movedIn.Add(1)
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
	if c.rare != nil {
		c.rare.markTimer = nil // the loop it left does not run it (readAtMarkAgain); Add reports what waits
	}
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
		l.stopConn(c)
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
	}
	return false
}
