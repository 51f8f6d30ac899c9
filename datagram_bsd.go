//go:build darwin || freebsd

package herd

import (
	"golang.org/x/sys/unix"

	"github.com/seed358e4494/herd/internal/sock"
)

// receive reads what a datagram socket holds, at most one batch (the
// poller reports the rest again), and hands each datagram to OnPacket.
func (a *acceptor) receive() {
	l := a.loop
	n := 0
	for a.batch == 0 || n < a.batch {
		size, err := sock.RecvFrom(a.fd, l.readBuf, &a.buf)
		switch {
		case err == unix.EINTR:
			continue
		case err != nil:
			if n == 0 && err == unix.EAGAIN {
				a.empty.Add(1)
			}
			return
		}
		n++
		l.bytesIn.Add(uint64(min(size, len(l.readBuf))))
		if size > len(l.readBuf) || size > l.w.maxPkg {
			l.oversize.Add(1)
			continue
		}
		l.messagesIn.Add(1)
		l.packet(a.fd, &a.buf, l.readBuf[:size])
	}
}

// inheritDrops does nothing: kqueue platforms give no count of the
// datagrams the kernel dropped on a socket (Linux's SO_RXQ_OVFL), and
// LoopStats.KernelDrops stays 0.
func inheritDrops(fd int) {}

// dgramBatch is Linux's batch of datagram buffers; kqueue platforms read
// one datagram per call.
type dgramBatch struct{}

// reply sends a reply at once: kqueue platforms have no sendmmsg.
func (l *Loop) reply(fd int, b []byte, to *sock.AcceptBuf) error { return l.sendDatagram(fd, b, to) }
