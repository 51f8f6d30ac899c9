//go:build linux || darwin || freebsd

package herd

import (
	"fmt"
	"strings"
	"time"
)

// Stats is a snapshot of a worker's counters (Workerman's `status`).
type Stats struct {
	Name string
	// Mode is how connections reach loops: reuseport, shared, round-robin
	// or least-conns (after any platform fallback).
	Mode string
	// Loops are the loops serving now, by Index (Scale adds and takes
	// away the highest-numbered ones; a loop keeps its Index while it
	// lives).
	Loops []LoopStats
	// LoopsAdded and LoopsRemoved count the loops Scale started and took
	// away since Run started.
	LoopsAdded, LoopsRemoved uint64
	// Rejected counts connections closed at once because MaxConns was
	// reached.
	Rejected uint64
	// DispatcherEmptyAccepts counts the dispatcher's wake-ups that found no
	// connection (dispatch modes only).
	DispatcherEmptyAccepts uint64
	// AcceptFairness and MessageFairness are Jain's index over the loops'
	// accepted connections and messages: 1 when all loops have the same
	// share, 1/Count when one loop has everything.
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
	// included: Accepted + Dialed = Active + Closed.
	Active int64
	Closed uint64
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
	fmt.Fprintf(&b, "worker %q mode=%s loops=%d (+%d -%d) rejected=%d fairness: accepted=%.3f messages=%.3f\n",
		s.Name, s.Mode, len(s.Loops), s.LoopsAdded, s.LoopsRemoved, s.Rejected, s.AcceptFairness, s.MessageFairness)
	fmt.Fprintf(&b, "%4s %9s %7s %9s %11s %12s %12s %9s %8s %9s %8s %9s %9s %6s\n",
		"loop", "accepted", "active", "closed", "messages", "bytes-in", "bytes-out", "wakeups", "empty-acc", "queued", "dropped", "drop-full", "switches", "busy%")
	for _, l := range s.Loops {
		fmt.Fprintf(&b, "%4d %9d %7d %9d %11d %12d %12d %9d %8d %9d %8d %9d %9d %6.1f\n",
			l.Index, l.Accepted, l.Active, l.Closed, l.MessagesIn, l.BytesIn, l.BytesOut, l.Wakeups, l.EmptyAccepts, l.SendQueueBytes, l.Dropped, l.DroppedFull, l.ThreadSwitches, l.BusyPercent())
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
	return threadSwitches(int(tid)) - l.switchBase
}
