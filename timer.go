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

// AfterFunc runs f on the loop once, after d.
func (l *Loop) AfterFunc(d time.Duration, f func()) *Timer {
	return l.schedule(d, 0, f)
}

// Every runs f on the loop every d (at least a millisecond) until Stop. A
// run that is late does not make the next one early: runs never pile up.
func (l *Loop) Every(d time.Duration, f func()) *Timer {
	return l.schedule(max(d, time.Millisecond), max(d, time.Millisecond), f)
}

func (l *Loop) schedule(d, period time.Duration, f func()) *Timer {
	t := &Timer{l: l, period: period, f: f, index: -1}
	start := time.Now()
	l.post(task{kind: taskFunc, f: func() {
		if t.stopped.Load() {
			return
		}
		t.when = start.Add(d)
		heap.Push(&l.timers, t)
	}})
	return t
}

// addTimer schedules f from the loop goroutine itself.
func (l *Loop) addTimer(d, period time.Duration, f func()) *Timer {
	t := &Timer{l: l, when: l.now.Add(d), period: period, f: f, index: -1}
	heap.Push(&l.timers, t)
	return t
}

// Stop keeps the timer from running again. Safe from any goroutine; when
// called off the loop, a run already under way finishes. It reports whether
// the timer was still active.
func (t *Timer) Stop() bool {
	if t.stopped.Swap(true) {
		return false
	}
	t.l.post(task{kind: taskFunc, f: func() {
		if t.index >= 0 {
			heap.Remove(&t.l.timers, t.index)
		}
	}})
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

// run fires the due timers.
func (h *timerHeap) run(l *Loop) {
	for len(*h) > 0 {
		t := (*h)[0]
		if t.when.After(l.now) {
			return
		}
		if t.period > 0 && !t.stopped.Load() {
			t.when = l.now.Add(t.period)
			heap.Fix(h, 0)
		} else {
			heap.Pop(h)
		}
		if !t.stopped.Load() {
			if t.period == 0 {
				t.stopped.Store(true)
			}
			l.callFunc(t.f)
		}
	}
}
