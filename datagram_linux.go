package herd

// udp:// on Linux: recvmmsg reads a batch of datagrams per system call,
// and the replies OnPacket makes go out with one sendmmsg per batch.
// Written by hand: Go's net package reads one datagram per call, and
// x/sys/unix has no recvmmsg/sendmmsg.

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// mmsghdr is the kernel's struct mmsghdr; Go lays it out as C does (the
// trailing padding on 64-bit comes from Msghdr's alignment).
type mmsghdr struct {
	hdr unix.Msghdr
	len uint32
}

// dgramBatch is a loop's datagram buffers, made on first use.
type dgramBatch struct {
	seg   int    // bytes per datagram slot: one more than the largest datagram kept
	bufs  []byte // len(in) slots
	in    []mmsghdr
	inIov []unix.Iovec
	from  []unix.RawSockaddrAny

	// Replies waiting for the batch's sendmmsg: their bytes (offsets into
	// outBuf, which may grow) and addresses.
	fd      int
	outBuf  []byte
	outOff  []int
	outTo   []acceptBuf
	out     []mmsghdr
	outIov  []unix.Iovec
	pending int
}

// maxDatagramBatch bounds the datagrams one recvmmsg takes, and the
// memory a loop keeps for them (at most 1 MiB).
const maxDatagramBatch = 64

func (l *Loop) datagramBatch() *dgramBatch {
	if l.dg != nil {
		return l.dg
	}
	seg := min(l.w.maxPkg+1, 64<<10)
	n := max(1, min(maxDatagramBatch, (1<<20)/seg))
	b := &dgramBatch{seg: seg, bufs: make([]byte, n*seg), in: make([]mmsghdr, n), inIov: make([]unix.Iovec, n), from: make([]unix.RawSockaddrAny, n),
		outOff: make([]int, 0, n), outTo: make([]acceptBuf, n), out: make([]mmsghdr, n), outIov: make([]unix.Iovec, n)}
	l.dg = b
	return b
}

// receive reads what a datagram socket holds, a few recvmmsg calls at most
// (the poller reports the rest again), and hands each datagram to
// OnPacket; then the replies go out.
func (a *acceptor) receive() {
	l := a.loop
	b := l.datagramBatch()
	b.fd = a.fd
	defer b.flush(l)
	for round := 0; round < 4; round++ {
		for i := range b.in {
			b.inIov[i] = unix.Iovec{Base: &b.bufs[i*b.seg]}
			b.inIov[i].SetLen(b.seg)
			b.in[i] = mmsghdr{hdr: unix.Msghdr{Name: (*byte)(unsafe.Pointer(&b.from[i])), Namelen: unix.SizeofSockaddrAny, Iov: &b.inIov[i]}}
			b.in[i].hdr.SetIovlen(1)
		}
		r, _, e := unix.Syscall6(unix.SYS_RECVMMSG, uintptr(a.fd), uintptr(unsafe.Pointer(&b.in[0])), uintptr(len(b.in)), 0, 0, 0)
		if e != 0 {
			if e == unix.EAGAIN && round == 0 {
				a.empty.Add(1)
			}
			if e == unix.EINTR {
				continue
			}
			return
		}
		n := int(r)
		for i := range n {
			m := &b.in[i]
			size := int(m.len)
			l.bytesIn.Add(uint64(size))
			if m.hdr.Flags&unix.MSG_TRUNC != 0 || size > l.w.maxPkg {
				l.oversize.Add(1)
				continue
			}
			l.messagesIn.Add(1)
			a.buf.rsa, a.buf.n = b.from[i], m.hdr.Namelen
			l.packet(a.fd, &a.buf, b.bufs[i*b.seg:i*b.seg+size])
		}
		b.flush(l) // this round's replies go before the next round is read
		if n < len(b.in) {
			return // the socket is empty
		}
	}
}

// reply queues a reply for the batch's sendmmsg, or sends it at once when
// it is not from the socket being read (it always is, from OnPacket).
func (l *Loop) reply(fd int, p []byte, to *acceptBuf) error {
	b := l.dg
	if b == nil || fd != b.fd {
		return l.sendDatagram(fd, p, to)
	}
	if b.pending == len(b.out) {
		b.flush(l)
	}
	b.outOff = append(b.outOff, len(b.outBuf))
	b.outBuf = append(b.outBuf, p...)
	b.outTo[b.pending] = *to
	b.pending++
	return nil
}

// flush sends the queued replies: one sendmmsg, again for what it did not
// take; what the kernel has no room for is dropped and counted.
func (b *dgramBatch) flush(l *Loop) {
	if b.pending == 0 {
		return
	}
	for i := range b.pending {
		end := len(b.outBuf)
		if i+1 < b.pending {
			end = b.outOff[i+1]
		}
		b.outIov[i] = unix.Iovec{}
		if end > b.outOff[i] {
			b.outIov[i].Base = &b.outBuf[b.outOff[i]]
		}
		b.outIov[i].SetLen(end - b.outOff[i])
		b.out[i] = mmsghdr{hdr: unix.Msghdr{Name: (*byte)(unsafe.Pointer(&b.outTo[i].rsa)), Namelen: b.outTo[i].n, Iov: &b.outIov[i]}}
		b.out[i].hdr.SetIovlen(1)
	}
	sent := 0
	for sent < b.pending {
		r, _, e := unix.Syscall6(unix.SYS_SENDMMSG, uintptr(b.fd), uintptr(unsafe.Pointer(&b.out[sent])), uintptr(b.pending-sent), 0, 0, 0)
		if e == unix.EINTR {
			continue
		}
		if e != 0 {
			// EAGAIN and the like: this datagram is dropped; go on with
			// the next.
			l.dropped.Add(1)
			sent++
			continue
		}
		for i := sent; i < sent+int(r); i++ {
			l.bytesOut.Add(uint64(b.out[i].len))
		}
		sent += int(r)
	}
	b.pending = 0
	b.outBuf = b.outBuf[:0]
	if cap(b.outBuf) > 1<<20 {
		b.outBuf = nil // a burst of large replies: do not keep its memory
	}
	b.outOff = b.outOff[:0]
}
