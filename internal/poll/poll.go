// Package poll wraps the readiness APIs herd's loops sleep on: epoll on
// Linux, kqueue on darwin and FreeBSD. Each Poller also carries a wake-up
// (eventfd / EVFILT_USER) so other goroutines can interrupt Wait.
//
// Registrations are level-triggered: a loop that reads only part of what is
// pending is told again on the next Wait, which keeps one connection from
// starving the others.
package poll

// Event is one readiness report from Wait.
type Event struct {
	Fd       int
	Readable bool // data, EOF or an error is waiting: a read will not block
	Writable bool // the send buffer has room, or the socket failed
	Failed   bool // an error or a hang-up, reported even for a socket watched for nothing
	PeerEnd  bool // the peer has ended its stream: what a read leaves is its end (EPOLLRDHUP, EV_EOF)
	Wake     bool // Wake was called; Fd is meaningless
}
