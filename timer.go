//go:build linux || darwin || freebsd

package herd

import (
	"container/heap"
	"sync/atomic"
	"time"
)

// Timer is a function scheduled on a loop by AfterFunc or Every.
type Timer struct {
	l       *Loop
	when    time.Time
	period  time.Duration // zero: run once
	f       func()
	index   int // in the loop's heap; -1 when not in it
	stopped atomic.Bool
}

// Stop keeps the timer from running again. Safe from any goroutine; when
// called off the loop, a run already under way finishes. It reports whether
// the timer was still active.
func (t *Timer) Stop() bool {
	if t.stopped.Swap(true) {
		return false
	}
	t.l.unschedule(t)
	return true
}

// timerHeap orders a loop's timers by due time.
type timerHeap []*Timer

func (h timerHeap) Len() int           { return len(h) }
func (h timerHeap) Less(i, j int) bool { return h[i].when.Before(h[j].when) }
func (h timerHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].index = i
	h[j].index = j
}
func (h *timerHeap) Push(x any) {
	t := x.(*Timer)
	t.index = len(*h)
	*h = append(*h, t)
}
func (h *timerHeap) Pop() any {
	old := *h
	t := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	t.index = -1
	return t
}

func (h *timerHeap) push(t *Timer) { heap.Push(h, t) }

// remove takes t out, if it is in.
func (h *timerHeap) remove(t *Timer) {
	if t.index >= 0 {
		heap.Remove(h, t.index)
	}
}

// arm makes t due at when, or earlier if it already is.
func (h *timerHeap) arm(t *Timer, when time.Time) {
	if t.index >= 0 {
		if when.Before(t.when) {
			t.when = when
			heap.Fix(h, t.index)
		}
		return
	}
	t.stopped.Store(false)
	t.when = when
	heap.Push(h, t)
}

// timeout is how long the poller may sleep, in milliseconds (-1: forever).
func (h timerHeap) timeout(now time.Time) int {
	if len(h) == 0 {
		return -1
	}
	d := h[0].when.Sub(now)
	if d <= 0 {
		return 0
	}
	return int((d + time.Millisecond - 1) / time.Millisecond) // round up: never wake early
}

// run fires the timers due at now, each through call.
func (h *timerHeap) run(now time.Time, call func(func())) {
	for len(*h) > 0 {
		t := (*h)[0]
		if t.when.After(now) {
			return
		}
		if t.period > 0 && !t.stopped.Load() {
			t.when = now.Add(t.period)
			heap.Fix(h, 0)
		} else {
			heap.Pop(h)
		}
		if !t.stopped.Load() {
			if t.period == 0 {
				t.stopped.Store(true)
			}
			call(t.f)
		}
	}
}
