// Package poll wraps the readiness APIs herd's loops sleep on: epoll on
// Linux, kqueue on darwin and FreeBSD. Each Poller also carries a wake-up
// (eventfd / EVFILT_USER) so other goroutines can interrupt Wait.
//
// Listeners and the wake-up are level-triggered everywhere. Connections are
// edge-triggered on Linux and level-triggered on kqueue (EdgeTriggered says
// which): the loop reads at most one buffer per connection per turn either
// way, and on Linux serves again, without a new event, a connection whose
// read filled its buffer.
package poll

// Event is one readiness report from Wait.
type Event struct {
	Fd       int
	Readable bool // data, EOF or an error is waiting: a read will not block
	Writable bool // the send buffer has room, or the socket failed
	Failed   bool // an error or a hang-up, reported even for a socket watched for nothing
	PeerEnd  bool // the peer has ended its stream: what a read leaves is its end (EPOLLRDHUP, EV_EOF)
	Urgent   bool // TCP urgent data waits (EPOLLPRI; Linux only): see Loop.urgent
	Wake     bool // Wake was called; Fd is meaningless
}
