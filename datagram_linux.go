package herd

// udp:// on Linux: recvmmsg reads a batch of datagrams per system call,
// and the replies OnPacket makes go out with one sendmmsg per batch
// (internal/sock).
//
// Kernel drops: with SO_RXQ_OVFL the kernel stamps each datagram it
// queues with the socket's drop counter, and recvmmsg hands the stamp
// over in a control message (only once the counter is not zero). The loop
// reads it from the batch it reads anyway: no system call more per
// datagram, one control slot per datagram slot.

import (
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/seed358e4494/herd/internal/sock"
)

// dgramBatch is a loop's datagram buffers, made on first use.
type dgramBatch struct {
	seg   int    // bytes per datagram slot: one more than the largest datagram kept
	bufs  []byte // len(in) slots
	in    []sock.Mmsghdr
	inIov []unix.Iovec
	from  []unix.RawSockaddrAny
	ctl   []byte // a control message slot per datagram slot (ctlSlot bytes)
	// seen holds the drop records of the sockets the loop reads, by
	// acceptor (a socket Scale moves here gets a new one).
	seen []loopDrops

	// Replies waiting for the batch's sendmmsg: their bytes (offsets into
	// outBuf, which may grow) and addresses.
	fd      int
	outBuf  []byte
	outOff  []int
	outTo   []sock.AcceptBuf
	out     []sock.Mmsghdr
	outIov  []unix.Iovec
	pending int
}

type loopDrops struct {
	a   *acceptor
	rec *socketDrops
}

// socketDrops is a datagram socket's drop counter as last counted, by
// whichever loop read it: it stays with the socket when Scale moves it,
// and loops that share a socket count each drop once.
type socketDrops struct {
	ino  uint64 // the socket's identity: a descriptor's number is reused
	seen atomic.Uint32
}

// dropRecords are the records of the process's datagram sockets, by
// descriptor.
var dropRecords struct {
	sync.Mutex
	byFd map[int]*socketDrops
}

// dropRecord returns fd's record, made for a socket it has not seen. The
// kernel's counter starts at 0 with the socket; the drops of a socket
// the process inherited were set aside when it took it (inheritDrops).
func dropRecord(fd int) *socketDrops {
	var st unix.Stat_t
	unix.Fstat(fd, &st)
	dropRecords.Lock()
	defer dropRecords.Unlock()
	if r := dropRecords.byFd[fd]; r != nil && r.ino == uint64(st.Ino) {
		return r
	}
	if dropRecords.byFd == nil {
		dropRecords.byFd = map[int]*socketDrops{}
	}
	// Stamps start with the option: drops before it come with the next
	// datagram queued after.
	unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RXQ_OVFL, 1)
	r := &socketDrops{ino: uint64(st.Ino)}
	dropRecords.byFd[fd] = r
	return r
}

// inheritDrops sets aside the drops a datagram socket the process
// inherited (an upgrade's, systemd's) had before: its last owner counted
// them.
func inheritDrops(fd int) {
	dropRecord(fd).seen.Store(sock.Drops(fd))
}

// ctlSlot is the room for the one control message a datagram brings: the
// drop counter, a uint32.
var ctlSlot = unix.CmsgSpace(4)

// maxDatagramBatch bounds the datagrams one recvmmsg takes, and the
// memory a loop keeps for them (at most 1 MiB).
const maxDatagramBatch = 64

func (l *Loop) datagramBatch() *dgramBatch {
	if l.dg != nil {
		return l.dg
	}
	seg := min(l.w.maxPkg+1, 64<<10)
	n := max(1, min(maxDatagramBatch, (1<<20)/seg))
	b := &dgramBatch{seg: seg, bufs: make([]byte, n*seg), in: make([]sock.Mmsghdr, n), inIov: make([]unix.Iovec, n), from: make([]unix.RawSockaddrAny, n), ctl: make([]byte, n*ctlSlot),
		outOff: make([]int, 0, n), outTo: make([]sock.AcceptBuf, n), out: make([]sock.Mmsghdr, n), outIov: make([]unix.Iovec, n)}
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
	seen := b.drops(a)
	for round := 0; round < 4; round++ {
		for i := range b.in {
			b.inIov[i] = unix.Iovec{Base: &b.bufs[i*b.seg]}
			b.inIov[i].SetLen(b.seg)
			b.in[i].SetRecv(&b.from[i], &b.inIov[i], b.ctl[i*ctlSlot:(i+1)*ctlSlot])
		}
		n, err := sock.Recvmmsg(a.fd, b.in)
		if err != nil {
			if err == unix.EAGAIN && round == 0 {
				a.empty.Add(1)
			}
			if err == unix.EINTR {
				continue
			}
			return
		}
		// The stamps grow in queue order: the batch's last one counts.
		for i := n - 1; i >= 0; i-- {
			if c, ok := b.dropCount(i); ok {
				seen.count(l, c)
				break
			}
		}
		for i := range n {
			m := &b.in[i]
			size := int(m.Len)
			l.bytesIn.Add(uint64(size))
			if m.Hdr.Flags&unix.MSG_TRUNC != 0 || size > l.w.maxPkg {
				l.oversize.Add(1)
				continue
			}
			l.messagesIn.Add(1)
			a.buf.Raw, a.buf.Len = b.from[i], m.Hdr.Namelen
			l.packet(a.fd, &a.buf, b.bufs[i*b.seg:i*b.seg+size])
		}
		b.flush(l) // this round's replies go before the next round is read
		if n < len(b.in) {
			return // the socket is empty
		}
	}
}

// dropCount is the drop counter the kernel gave with datagram i of the
// last recvmmsg, if it gave one.
func (b *dgramBatch) dropCount(i int) (uint32, bool) {
	return sock.ControlUint32(b.ctl[i*ctlSlot:(i+1)*ctlSlot], int(b.in[i].Hdr.Controllen), unix.SOL_SOCKET, unix.SO_RXQ_OVFL)
}

// drops returns the record of a's socket, looked up once per socket and
// loop.
func (b *dgramBatch) drops(a *acceptor) *socketDrops {
	for _, d := range b.seen {
		if d.a == a {
			return d.rec
		}
	}
	keep := b.seen[:0]
	for _, d := range b.seen {
		if d.a.fd >= 0 { // the loop still reads it
			keep = append(keep, d)
		}
	}
	b.seen = append(keep, loopDrops{a: a, rec: dropRecord(a.fd)})
	return b.seen[len(b.seen)-1].rec
}

// count adds to l's counter what stamp c says the socket dropped since
// the last stamp counted. A stamp older than that (another loop sharing
// the socket counted a later one, or it was set aside at inheritance)
// adds nothing.
func (r *socketDrops) count(l *Loop, c uint32) {
	for {
		old := r.seen.Load()
		d := int32(c - old) // the counter wraps at 2³²
		if d <= 0 {
			return
		}
		if r.seen.CompareAndSwap(old, c) {
			l.kernelDrops.Add(uint64(d))
			return
		}
	}
}

// reply queues a reply for the batch's sendmmsg, or sends it at once when
// it is not from the socket being read (it always is, from OnPacket).
func (l *Loop) reply(fd int, p []byte, to *sock.AcceptBuf) error {
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
		b.out[i].SetSend(&b.outTo[i], &b.outIov[i])
	}
	sent := 0
	for sent < b.pending {
		r, err := sock.Sendmmsg(b.fd, b.out[sent:b.pending])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			// EAGAIN and the like: this datagram is dropped; go on with
			// the next.
			l.dropped.Add(1)
			sent++
			continue
		}
		for i := sent; i < sent+int(r); i++ {
			l.bytesOut.Add(uint64(b.out[i].Len))
		}
		sent += r
	}
	b.pending = 0
	b.outBuf = b.outBuf[:0]
	if cap(b.outBuf) > 1<<20 {
		b.outBuf = nil // a burst of large replies: do not keep its memory
	}
	b.outOff = b.outOff[:0]
}
