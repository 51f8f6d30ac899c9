// Package prometheus exports herd workers' per-loop figures to Prometheus.
//
// A Collector reads each Worker's Stats when Prometheus scrapes, and only
// then: nothing is added to the loops' hot path. Register it with a
// registry and serve that registry as usual:
//
//	reg := prometheus.NewRegistry()
//	reg.MustRegister(herdprom.NewCollector(w))
//	http.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
//
// Per loop (labels worker, loop), following the Prometheus naming guide:
//
//	herd_loop_connections_accepted_total   counter
//	herd_loop_connections_closed_total     counter
//	herd_loop_connections_active           gauge
//	herd_loop_messages_received_total      counter
//	herd_loop_received_bytes_total         counter
//	herd_loop_sent_bytes_total             counter
//	herd_loop_wakeups_total                counter
//	herd_loop_empty_accepts_total          counter
//	herd_loop_send_queue_bytes             gauge
//	herd_loop_dropped_messages_total       counter, label reason: full (the send queue was full), closed (sent to a closing connection)
//	herd_loop_busy_seconds_total           counter: time spent working; its rate is the loop's load, the figure to scale on
//	herd_loop_oversize_datagrams_total     counter: udp:// datagrams dropped on receipt (over MaxPackageSize, or not one message)
//	herd_loop_kernel_dropped_datagrams_total counter: udp:// datagrams the kernel dropped on a full receive buffer (Linux only; 0 elsewhere)
//	herd_loop_connections_dialed_total     counter: outbound connections (Loop.Dial)
//	herd_loop_dial_failures_total          counter: outbound connections that never connected
//	herd_loop_spliced_bytes_total          counter: bytes Pipe moved with splice(2)
//	herd_loop_connections_moved_in_total   counter: open connections Scale handed to the loop
//	herd_loop_connections_moved_out_total  counter: open connections the loop handed on when it left
//
// Per loop, accepted + dialed + moved in = active + closed + moved out.
//
// A balancer's per-backend figures have a collector of their own,
// BalancerCollector.
//
// Per worker (label worker): herd_worker_loops (the loops serving now),
// herd_worker_loops_added_total and herd_worker_loops_removed_total
// (Worker.Scale), herd_worker_connections_rejected_total (MaxConns),
// herd_worker_accept_fairness and herd_worker_message_fairness (Jain's
// index over the loops, 1 when even).
//
// Scale takes the highest-numbered loops away and adds loops numbered from
// the count up. A loop label's series counts for every loop that has had
// that number (herd.Stats' rows): after a shrink the series of a number no
// loop has now stay, at the values the last loop left them, and a loop
// added later under that number goes on from there. No _total series ever
// decreases, so rate() sees no counter reset, and sums over the loop label
// are the worker's totals. herd_worker_accept_fairness and
// herd_worker_message_fairness cover the loops serving now, since the last
// change.
package prometheus

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/seed358e4494/herd"
)

// Collector is a prometheus.Collector for herd workers.
type Collector struct {
	workers []*herd.Worker
}

// NewCollector collects the figures of the given workers, which should
// have distinct Names (the worker label).
func NewCollector(workers ...*herd.Worker) *Collector {
	return &Collector{workers: workers}
}

var (
	loopLabels   = []string{"worker", "loop"}
	workerLabels = []string{"worker"}

	descAccepted   = prometheus.NewDesc("herd_loop_connections_accepted_total", "Connections the loop took on.", loopLabels, nil)
	descClosed     = prometheus.NewDesc("herd_loop_connections_closed_total", "Connections the loop closed.", loopLabels, nil)
	descActive     = prometheus.NewDesc("herd_loop_connections_active", "Connections open on the loop.", loopLabels, nil)
	descMessages   = prometheus.NewDesc("herd_loop_messages_received_total", "Messages given to OnMessage (reads, without a protocol).", loopLabels, nil)
	descBytesIn    = prometheus.NewDesc("herd_loop_received_bytes_total", "Bytes read.", loopLabels, nil)
	descBytesOut   = prometheus.NewDesc("herd_loop_sent_bytes_total", "Bytes written.", loopLabels, nil)
	descWakeups    = prometheus.NewDesc("herd_loop_wakeups_total", "Returns from the poller.", loopLabels, nil)
	descEmpty      = prometheus.NewDesc("herd_loop_empty_accepts_total", "Listener wake-ups that found no connection.", loopLabels, nil)
	descQueued     = prometheus.NewDesc("herd_loop_send_queue_bytes", "Bytes waiting in the loop's send queues.", loopLabels, nil)
	descDropped    = prometheus.NewDesc("herd_loop_dropped_messages_total", "Messages not sent, by reason: full (send queue full), closed (connection closing).", append(loopLabels, "reason"), nil)
	descBusy       = prometheus.NewDesc("herd_loop_busy_seconds_total", "Time the loop spent handling events, tasks and timers.", loopLabels, nil)
	descDialed     = prometheus.NewDesc("herd_loop_connections_dialed_total", "Outbound connections the loop dialed (Loop.Dial).", loopLabels, nil)
	descDialFailed = prometheus.NewDesc("herd_loop_dial_failures_total", "Outbound connections that never connected.", loopLabels, nil)
	descSpliced    = prometheus.NewDesc("herd_loop_spliced_bytes_total", "Bytes Pipe moved with splice(2).", loopLabels, nil)
	descMovedIn    = prometheus.NewDesc("herd_loop_connections_moved_in_total", "Open connections Scale handed to the loop from a loop that left.", loopLabels, nil)
	descMovedOut   = prometheus.NewDesc("herd_loop_connections_moved_out_total", "Open connections the loop handed on when Scale took it away.", loopLabels, nil)
	descOversize   = prometheus.NewDesc("herd_loop_oversize_datagrams_total", "Datagrams (udp://) dropped on receipt: over MaxPackageSize, or not one whole message.", loopLabels, nil)
	descKernelDrop = prometheus.NewDesc("herd_loop_kernel_dropped_datagrams_total", "Datagrams (udp://) the kernel dropped because the socket's receive buffer was full (Linux only).", loopLabels, nil)
	descLoops      = prometheus.NewDesc("herd_worker_loops", "Event loops serving now.", workerLabels, nil)
	descAdded      = prometheus.NewDesc("herd_worker_loops_added_total", "Loops Scale started.", workerLabels, nil)
	descRemoved    = prometheus.NewDesc("herd_worker_loops_removed_total", "Loops Scale took away.", workerLabels, nil)
	descRejected   = prometheus.NewDesc("herd_worker_connections_rejected_total", "Connections closed at once because MaxConns was reached.", workerLabels, nil)
	descAccFair    = prometheus.NewDesc("herd_worker_accept_fairness", "Jain's index of accepted connections over the loops serving, since the last Scale (1: even).", workerLabels, nil)
	descMsgFair    = prometheus.NewDesc("herd_worker_message_fairness", "Jain's index of messages over the loops serving, since the last Scale (1: even).", workerLabels, nil)
	allDescs       = []*prometheus.Desc{descAccepted, descClosed, descActive, descMessages, descBytesIn, descBytesOut, descWakeups, descEmpty, descQueued, descDropped, descBusy, descOversize, descKernelDrop, descDialed, descDialFailed, descSpliced, descMovedIn, descMovedOut, descLoops, descAdded, descRemoved, descRejected, descAccFair, descMsgFair}
	counter, gauge = prometheus.CounterValue, prometheus.GaugeValue
)

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range allDescs {
		ch <- d
	}
}

// Collect implements prometheus.Collector: one Stats snapshot per worker.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	for _, w := range c.workers {
		s := w.Stats()
		for _, l := range append(s.Loops, s.Departed...) {
			loop := strconv.Itoa(l.Index)
			m := func(d *prometheus.Desc, t prometheus.ValueType, v float64, extra ...string) {
				ch <- prometheus.MustNewConstMetric(d, t, v, append([]string{s.Name, loop}, extra...)...)
			}
			m(descAccepted, counter, float64(l.Accepted))
			m(descClosed, counter, float64(l.Closed))
			m(descActive, gauge, float64(l.Active))
			m(descMessages, counter, float64(l.MessagesIn))
			m(descBytesIn, counter, float64(l.BytesIn))
			m(descBytesOut, counter, float64(l.BytesOut))
			m(descWakeups, counter, float64(l.Wakeups))
			m(descEmpty, counter, float64(l.EmptyAccepts))
			m(descQueued, gauge, float64(l.SendQueueBytes))
			m(descDropped, counter, float64(l.DroppedFull), "full")
			m(descDropped, counter, float64(l.Dropped-min(l.DroppedFull, l.Dropped)), "closed")
			m(descBusy, counter, l.Busy.Seconds())
			m(descOversize, counter, float64(l.Oversize))
			m(descKernelDrop, counter, float64(l.KernelDrops))
			m(descDialed, counter, float64(l.Dialed))
			m(descDialFailed, counter, float64(l.DialFailed))
			m(descSpliced, counter, float64(l.Spliced))
			m(descMovedIn, counter, float64(l.MovedIn))
			m(descMovedOut, counter, float64(l.MovedOut))
		}
		ch <- prometheus.MustNewConstMetric(descLoops, gauge, float64(len(s.Loops)), s.Name)
		ch <- prometheus.MustNewConstMetric(descAdded, counter, float64(s.LoopsAdded), s.Name)
		ch <- prometheus.MustNewConstMetric(descRemoved, counter, float64(s.LoopsRemoved), s.Name)
		ch <- prometheus.MustNewConstMetric(descRejected, counter, float64(s.Rejected), s.Name)
		ch <- prometheus.MustNewConstMetric(descAccFair, gauge, s.AcceptFairness, s.Name)
		ch <- prometheus.MustNewConstMetric(descMsgFair, gauge, s.MessageFairness, s.Name)
	}
}
