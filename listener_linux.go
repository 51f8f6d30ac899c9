package herd

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// Linux hashes each new connection over the sockets of a SO_REUSEPORT
// group, so per-loop listeners share the load evenly (Linux 3.9+).
const (
	reusePortBalances = true
	soReusePort       = unix.SO_REUSEPORT
	exclusiveWakeup   = true // EPOLLEXCLUSIVE, Linux 4.5+
	// Accepted sockets inherit TCP_NODELAY from the listener: no
	// setsockopt per connection.
	nodelayInherited = true
)

// acceptBuf is where accept has the kernel write the peer's address: one per
// accepting goroutine, so that accepting allocates nothing.
type acceptBuf struct {
	rsa unix.RawSockaddrAny
	n   uint32
}

// accept takes one connection, already non-blocking and close-on-exec.
func accept(lfd int, b *acceptBuf) (int, peerAddr, error) {
	b.n = unix.SizeofSockaddrAny
	fd, _, e := unix.RawSyscall6(unix.SYS_ACCEPT4, uintptr(lfd), uintptr(unsafe.Pointer(&b.rsa)), uintptr(unsafe.Pointer(&b.n)),
		unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0, 0)
	if e != 0 {
		return -1, peerAddr{}, e
	}
	return int(fd), b.peer(), nil
}

// peer decodes the address accept received (as unix.Accept4 would, without
// allocating for IP addresses).
func (b *acceptBuf) peer() peerAddr {
	switch b.rsa.Addr.Family {
	case unix.AF_INET:
		pp := (*unix.RawSockaddrInet4)(unsafe.Pointer(&b.rsa))
		port := (*[2]byte)(unsafe.Pointer(&pp.Port))
		p := peerAddr{kind: peerInet4, port: uint16(port[0])<<8 | uint16(port[1])}
		copy(p.ip[:], pp.Addr[:])
		return p
	case unix.AF_INET6:
		pp := (*unix.RawSockaddrInet6)(unsafe.Pointer(&b.rsa))
		port := (*[2]byte)(unsafe.Pointer(&pp.Port))
		return peerAddr{kind: peerInet6, port: uint16(port[0])<<8 | uint16(port[1]), zone: pp.Scope_id, ip: pp.Addr}
	case unix.AF_UNIX:
		pp := (*unix.RawSockaddrUnix)(unsafe.Pointer(&b.rsa))
		path := unsafe.Slice((*byte)(unsafe.Pointer(&pp.Path[0])), len(pp.Path))
		// The buffer is reused: only the bytes the kernel wrote count.
		n := int(b.n) - int(unsafe.Offsetof(pp.Path))
		path = path[:min(max(n, 0), len(path))]
		// An unnamed or abstract socket reads as "@" and what follows, as
		// x/sys (and Go's net package) show it.
		prefix := ""
		if len(path) == 0 || path[0] == 0 {
			prefix = "@"
			if len(path) > 0 {
				path = path[1:]
			}
		}
		for i, c := range path {
			if c == 0 {
				path = path[:i]
				break
			}
		}
		return peerAddr{kind: peerUnix, name: prefix + string(path)}
	}
	return peerAddr{}
}
