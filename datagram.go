//go:build linux || darwin || freebsd

package herd

// udp:// workers: a datagram socket per loop (a SO_REUSEPORT group, so the
// kernel picks a datagram's loop by hashing its addresses), read on the
// loop like a listener, each datagram handed to OnPacket.

import (
	"errors"
	"fmt"
	"net"

	"golang.org/x/sys/unix"

	"github.com/seed358e4494/herd/internal/sock"
)

// ErrNotDatagram is returned by Loop.SendTo on a worker that is not
// udp://.
var ErrNotDatagram = errors.New("herd: not a udp:// worker")

// Packet is one datagram a udp:// worker received, as OnPacket sees it
// (Workerman's UdpConnection). It is valid only during OnPacket.
type Packet struct {
	l    *Loop
	fd   int
	from *sock.AcceptBuf
}

// Loop is the loop that received the datagram.
func (p *Packet) Loop() *Loop { return p.l }

// RemoteAddr is the sender's address (a *net.UDPAddr).
func (p *Packet) RemoteAddr() net.Addr { return udpAddr(p.from.Peer()) }

// Reply sends b back to the sender as one datagram, from the socket that
// received it, encoded with the worker's Protocol if it has one
// (Workerman's $connection->send). It does not keep b. On Linux the
// replies of one batch of datagrams go out together, with one sendmmsg
// once the batch's OnPacket calls have returned; a datagram the kernel
// has no room for is dropped and counted in Stats (Dropped), and Reply
// reports an error only for what it could tell at once.
func (p *Packet) Reply(b []byte) error {
	if enc := p.l.w.proto; enc != nil {
		b = enc.Encode(nil, b)
	}
	return p.l.reply(p.fd, b, p.from)
}

// SendTo sends b as one datagram to addr (a *net.UDPAddr, or any net.Addr
// whose String is host:port) from one of the loop's sockets, encoded with
// the worker's Protocol if it has one. Safe from any goroutine.
func (l *Loop) SendTo(addr net.Addr, b []byte) error {
	fd := l.datagramFd.Load()
	if fd < 0 || l.w.ep.network != "udp" {
		return ErrNotDatagram
	}
	ua, ok := addr.(*net.UDPAddr)
	if !ok {
		var err error
		if ua, err = net.ResolveUDPAddr("udp", addr.String()); err != nil {
			return fmt.Errorf("herd: SendTo %v: %w", addr, err)
		}
	}
	var to sock.AcceptBuf
	to.Set(ua)
	if p := l.w.proto; p != nil {
		b = p.Encode(nil, b)
	}
	return l.sendDatagram(int(fd), b, &to)
}

// sendDatagram sends b (encoded) to the address in to, at once.
func (l *Loop) sendDatagram(fd int, b []byte, to *sock.AcceptBuf) error {
	for {
		err := sock.SendTo(fd, b, to)
		switch err {
		case nil:
			l.bytesOut.Add(uint64(len(b)))
			return nil
		case unix.EINTR:
			continue
		}
		l.dropped.Add(1)
		if err == unix.EAGAIN || err == unix.ENOBUFS {
			return fmt.Errorf("herd: datagram dropped: %w", err)
		}
		return fmt.Errorf("herd: sendto: %w", err)
	}
}

// packet runs OnPacket for one datagram, decoded by the worker's Protocol
// if it has one (a datagram is one message; one the protocol does not
// frame whole is dropped and counted).
func (l *Loop) packet(fd int, from *sock.AcceptBuf, data []byte) {
	if p := l.w.proto; p != nil {
		n, err := p.Input(data)
		if err != nil || n != len(data) {
			l.oversize.Add(1)
			return
		}
		data = p.Decode(data)
	}
	if l.w.OnPacket == nil {
		return
	}
	defer func() {
		if r := recover(); r != nil {
			l.recovered(nil, r)
		}
	}()
	l.pkt = Packet{l: l, fd: fd, from: from}
	l.w.OnPacket(&l.pkt, data)
}

// udpAddr converts a datagram's sender for the API.
func udpAddr(p sock.Peer) net.Addr {
	if a, ok := p.NetAddr().(*net.TCPAddr); ok {
		return &net.UDPAddr{IP: a.IP, Port: a.Port, Zone: a.Zone}
	}
	return nil
}
