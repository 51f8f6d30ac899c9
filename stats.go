//go:build linux || darwin || freebsd

package herd

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/seed358e4494/herd/internal/sock"
)

// Stats is a snapshot of a worker's counters (Workerman's `status`).
type Stats struct {
	Name string
	// Mode is how connections reach loops: reuseport, shared, round-robin
	// or least-conns (after any platform fallback).
	Mode string
	// Loops are the loops serving now, by Index (Scale adds and takes
	// away the highest-numbered ones; a loop keeps its Index while it
	// lives). A row counts since Run started for its Index, over every
	// loop that has had it: a loop that Scale adds again under an Index
	// goes on from where the last one stopped, so no counter goes back.
	Loops []LoopStats
	// Departed are the rows of Indexes no loop has now (Scale took them
	// away), as the last loop with each left them: with Loops, they make
	// the worker's totals (Total), which never decrease.
	Departed []LoopStats
	// Since is when the loops last changed (Run or Scale): the start of the
	// window AcceptFairness and MessageFairness measure.
	Since time.Time
	// LoopsAdded and LoopsRemoved count the loops Scale started and took
	// away since Run started.
	LoopsAdded, LoopsRemoved uint64
	// Rejected counts connections closed at once because MaxConns was
	// reached.
	Rejected uint64
	// AcceptFairness and MessageFairness are Jain's index over the loops
	// serving now of the connections they accepted and the messages they
	// received since Since: 1 when all loops have the same share, 1/Count
	// when one loop has everything. Connections Scale moved do not count.
	AcceptFairness  float64
	MessageFairness float64
}

// LoopStats are one loop's counters since Run started.
type LoopStats struct {
	Index    int
	Accepted uint64 // connections taken on
	// Dialed counts the connections the loop dialed (Loop.Dial), and
	// DialFailed those of them that never connected.
	Dialed, DialFailed uint64
	// Active counts the connections open now, accepted and dialed (those
	// still connecting too); Closed those that closed, failed dials
	// included. MovedIn counts the open connections Scale handed to this
	// loop from a loop that left, MovedOut those it handed on when it
	// left: Accepted + Dialed + MovedIn = Active + Closed + MovedOut.
	Active            int64
	Closed            uint64
	MovedIn, MovedOut uint64
	// MessagesIn counts messages given to OnMessage (reads, without a
	// protocol).
	MessagesIn uint64
	BytesIn    uint64
	BytesOut   uint64
	// Wakeups counts returns from the poller.
	Wakeups uint64
	// EmptyAccepts counts wake-ups for the listener that found no
	// connection: another loop took it. The kernel re-checks readiness
	// before waking a thread, so this under-counts the thundering herd;
	// ThreadSwitches shows it.
	EmptyAccepts uint64
	// SendQueueBytes is what waits in the loop's send queues now.
	SendQueueBytes int64
	// Dropped counts messages Send, SendRaw or Write did not send: those
	// DroppedFull counts, and those sent to a connection already closing or
	// closed (Write reports these with ErrConnClosed).
	Dropped uint64
	// DroppedFull counts messages Send and SendRaw dropped on a full send
	// queue (Workerman's drop policy; Write never drops for that).
	DroppedFull uint64
	// Oversize counts datagrams (udp://) dropped on receipt: larger than
	// MaxPackageSize, or not one whole message of the Protocol. Datagrams a
	// reply could not send count in Dropped.
	Oversize uint64
	// KernelDrops counts datagrams (udp://) the kernel dropped because a
	// socket of the loop had no room left in its receive buffer: the loop
	// did not read fast enough. The kernel gives its count with the
	// datagrams it queues, so a drop shows once the socket's next datagram
	// is read. A socket inherited (an upgrade, systemd) counts from when
	// the process took it. Linux only (SO_RXQ_OVFL); always 0 elsewhere.
	KernelDrops uint64
	// Spliced counts the bytes Pipe moved with splice(2) (PipeOptions.Splice),
	// which BytesIn counts too.
	Spliced uint64
	// TLSHandshakes and TLSFailed count the TLS handshakes that completed
	// and the TLS connections that failed: a bad handshake or record, a
	// handshake not over at HandshakeTimeout, a first record that is not
	// a handshake (plain HTTP among them), input past HandshakeInputBudget,
	// a client gone before its handshake was over.
	TLSHandshakes, TLSFailed uint64
	// Busy is the time the loop has spent handling events, tasks and
	// timers (callbacks included), and Running the time since it started:
	// Busy/Running is how loaded it is, the figure to scale on when one hot
	// loop hides in an otherwise idle process. The rest of Running it
	// waited in the poller (or let other goroutines run).
	Busy, Running time.Duration
	// ThreadSwitches is the voluntary context switches of the loop's OS
	// thread since the loop started: how often it went to sleep. With
	// Worker.LockOSThread on Linux only (read from /proc: Stats costs a
	// file read per loop); zero otherwise.
	ThreadSwitches uint64
}

// BusyPercent is Busy as a share of Running, in percent.
func (l LoopStats) BusyPercent() float64 {
	if l.Running <= 0 {
		return 0
	}
	return 100 * float64(l.Busy) / float64(l.Running)
}

// Total is the worker's totals since Run started: the sums of Loops and
// Departed (Index is -1). Its counters never decrease, whatever Scale does.
func (s Stats) Total() LoopStats {
	t := LoopStats{Index: -1}
	for _, l := range s.Loops {
		t = t.plus(l)
	}
	for _, l := range s.Departed {
		t = t.plus(l)
	}
	return t
}

// plus adds o's counters to l's (l's Index stays).
func (l LoopStats) plus(o LoopStats) LoopStats {
	l.Accepted += o.Accepted
	l.Dialed += o.Dialed
	l.DialFailed += o.DialFailed
	l.Active += o.Active
	l.Closed += o.Closed
	l.MovedIn += o.MovedIn
	l.MovedOut += o.MovedOut
	l.MessagesIn += o.MessagesIn
	l.BytesIn += o.BytesIn
	l.BytesOut += o.BytesOut
	l.Wakeups += o.Wakeups
	l.EmptyAccepts += o.EmptyAccepts
	l.SendQueueBytes += o.SendQueueBytes
	l.Dropped += o.Dropped
	l.DroppedFull += o.DroppedFull
	l.Oversize += o.Oversize
	l.KernelDrops += o.KernelDrops
	l.Spliced += o.Spliced
	l.TLSHandshakes += o.TLSHandshakes
	l.TLSFailed += o.TLSFailed
	l.Busy += o.Busy
	l.Running += o.Running
	l.ThreadSwitches += o.ThreadSwitches
	return l
}

// Stats returns a snapshot of the worker's counters. Safe from any
// goroutine, cheap enough to call often.
func (w *Worker) Stats() Stats {
	w.mu.Lock()
	loops, departing, mode := w.loops, append([]*Loop(nil), w.departing...), w.mode
	retired := append([]LoopStats(nil), w.sc.retired...)
	base, since := append([]fairBase(nil), w.sc.base...), w.sc.since
	// Read under w.mu: a loop that exits moves from departing to retired
	// under it, so it is counted once.
	rows := w.rowsLocked(loops, departing, retired)
	w.mu.Unlock()
	s := Stats{Name: w.Name, Mode: mode.String(), Loops: rows[:len(loops)], Since: since, Rejected: w.rejected.Load(),
		LoopsAdded: w.loopsAdded.Load(), LoopsRemoved: w.loopsRemoved.Load()}
	for _, r := range rows[len(loops):] {
		if r != (LoopStats{Index: r.Index}) {
			s.Departed = append(s.Departed, r)
		}
	}
	window := make([]LoopStats, len(s.Loops))
	for i, l := range s.Loops {
		window[i] = LoopStats{Accepted: l.Accepted, MessagesIn: l.MessagesIn}
		if i < len(base) {
			window[i].Accepted -= min(base[i].accepted, l.Accepted)
			window[i].MessagesIn -= min(base[i].messages, l.MessagesIn)
		}
	}
	s.AcceptFairness = jain(window, func(l LoopStats) uint64 { return l.Accepted })
	s.MessageFairness = jain(window, func(l LoopStats) uint64 { return l.MessagesIn })
	return s
}

// rowsLocked is one row per Index, from 0 to the highest any loop has had:
// the loops serving now (the first len(loops)), those that left and are
// still finishing, and what those that exited left (retired). Called with
// w.mu held.
func (w *Worker) rowsLocked(loops, departing []*Loop, retired []LoopStats) []LoopStats {
	n := max(len(loops), len(retired))
	for _, l := range departing {
		n = max(n, l.index+1)
	}
	rows := make([]LoopStats, n)
	for i := range rows {
		rows[i].Index = i
		if i < len(retired) {
			rows[i] = retired[i]
		}
	}
	for _, l := range departing {
		rows[l.index] = rows[l.index].plus(l.stats())
	}
	for _, l := range loops {
		rows[l.index] = rows[l.index].plus(l.stats())
	}
	return rows
}

// fairBase is where a row's counters stood when the loops last changed.
type fairBase struct{ accepted, messages uint64 }

// jain is Jain's fairness index (Σx)² / (n·Σx²) of one counter over loops.
func jain(loops []LoopStats, x func(LoopStats) uint64) float64 {
	var sum, sq float64
	for _, l := range loops {
		v := float64(x(l))
		sum += v
		sq += v * v
	}
	if sq == 0 {
		return 1
	}
	return sum * sum / (float64(len(loops)) * sq)
}

// String renders the stats as a table, one row per loop.
func (s Stats) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "worker %q mode=%s loops=%d (+%d -%d) rejected=%d fairness since %s: accepted=%.3f messages=%.3f\n",
		s.Name, s.Mode, len(s.Loops), s.LoopsAdded, s.LoopsRemoved, s.Rejected, s.Since.Format(time.TimeOnly), s.AcceptFairness, s.MessageFairness)
	fmt.Fprintf(&b, "%5s %9s %7s %9s %8s %9s %11s %12s %12s %9s %8s %9s %8s %9s %9s %6s\n",
		"loop", "accepted", "active", "closed", "moved-in", "moved-out", "messages", "bytes-in", "bytes-out", "wakeups", "empty-acc", "queued", "dropped", "drop-full", "switches", "busy%")
	row := func(index string, l LoopStats) {
		fmt.Fprintf(&b, "%5s %9d %7d %9d %8d %9d %11d %12d %12d %9d %8d %9d %8d %9d %9d %6.1f\n",
			index, l.Accepted, l.Active, l.Closed, l.MovedIn, l.MovedOut, l.MessagesIn, l.BytesIn, l.BytesOut, l.Wakeups, l.EmptyAccepts, l.SendQueueBytes, l.Dropped, l.DroppedFull, l.ThreadSwitches, l.BusyPercent())
	}
	for _, l := range s.Loops {
		row(strconv.Itoa(l.Index), l)
	}
	for _, l := range s.Departed {
		row(strconv.Itoa(l.Index)+"*", l)
	}
	if len(s.Departed) > 0 {
		b.WriteString("* a loop Scale took away: its counts until then\n")
	}
	return b.String()
}

func (l *Loop) stats() LoopStats {
	// DroppedFull before Dropped: send counts a drop in Dropped first, so
	// the pair read this way never has more full drops than drops.
	full := l.droppedFull.Load()
	return LoopStats{
		Index:          l.index,
		Accepted:       l.accepted.Load(),
		Dialed:         l.dialed.Load(),
		DialFailed:     l.dialFailed.Load(),
		Active:         l.active.Load(),
		Closed:         l.closedConns.Load(),
		MovedIn:        l.movedIn.Load(),
		MovedOut:       l.movedOut.Load(),
		MessagesIn:     l.messagesIn.Load(),
		BytesIn:        l.bytesIn.Load(),
		BytesOut:       l.bytesOut.Load(),
		Wakeups:        l.wakeups.Load(),
		EmptyAccepts:   l.emptyAccepts.Load(),
		SendQueueBytes: l.sendQueued.Load(),
		Dropped:        l.dropped.Load(),
		DroppedFull:    full,
		Oversize:       l.oversize.Load(),
		KernelDrops:    l.kernelDrops.Load(),
		Spliced:        l.spliced.Load(),
		TLSHandshakes:  l.tlsHandshakes.Load(),
		TLSFailed:      l.tlsFailed.Load(),
		ThreadSwitches: l.threadSwitches(),
		Busy:           time.Duration(l.busyNanos.Load()),
		Running:        l.running(),
	}
}

// running is how long the loop has run (until it exited).
func (l *Loop) running() time.Duration {
	if l.started.IsZero() {
		return 0
	}
	end := time.Now()
	if ns := l.exitedAt.Load(); ns != 0 {
		end = time.Unix(0, ns)
	}
	return end.Sub(l.started)
}

// threadSwitches is the voluntary context switches of the loop's thread
// since the loop started.
func (l *Loop) threadSwitches() uint64 {
	tid := l.tid.Load()
	if tid == 0 {
		return l.switchFinal.Load()
	}
	return sock.ThreadSwitches(int(tid)) - l.switchBase
}
