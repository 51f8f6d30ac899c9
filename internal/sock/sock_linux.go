package sock

// The socket system calls of Linux, raw where they cannot wait (see the
// package doc).

import (
	"net"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Linux hashes each new connection over the sockets of a SO_REUSEPORT
// group, so per-loop listeners share the load evenly (Linux 3.9+).
const (
	ReusePortBalances = true
	ReusePort         = unix.SO_REUSEPORT
	// Accepted sockets inherit TCP_NODELAY from the listener: no
	// setsockopt per connection.
	NodelayInherited = true
)

// AcceptBuf is where accept has the kernel write the peer's address: one per
// accepting goroutine, so that accepting allocates nothing.
type AcceptBuf struct {
	Raw unix.RawSockaddrAny
	Len uint32
}

// Accept takes one connection, already non-blocking and close-on-exec.
func Accept(lfd int, b *AcceptBuf) (int, Peer, error) {
	b.Len = unix.SizeofSockaddrAny
	fd, _, e := unix.RawSyscall6(unix.SYS_ACCEPT4, uintptr(lfd), uintptr(unsafe.Pointer(&b.Raw)), uintptr(unsafe.Pointer(&b.Len)),
		unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0, 0)
	if e != 0 {
		return -1, Peer{}, e
	}
	return int(fd), b.Peer(), nil
}

// Peer decodes the address accept received (as unix.Accept4 would, without
// allocating for IP addresses).
func (b *AcceptBuf) Peer() Peer {
	switch b.Raw.Addr.Family {
	case unix.AF_INET:
		pp := (*unix.RawSockaddrInet4)(unsafe.Pointer(&b.Raw))
		port := (*[2]byte)(unsafe.Pointer(&pp.Port))
		p := Peer{Addr: Addr{kind: PeerInet4, port: uint16(port[0])<<8 | uint16(port[1])}}
		copy(p.ip[:], pp.Addr[:])
		return p
	case unix.AF_INET6:
		pp := (*unix.RawSockaddrInet6)(unsafe.Pointer(&b.Raw))
		port := (*[2]byte)(unsafe.Pointer(&pp.Port))
		return Peer{Addr: Addr{kind: PeerInet6, port: uint16(port[0])<<8 | uint16(port[1]), zone: pp.Scope_id, ip: pp.Addr}}
	case unix.AF_UNIX:
		pp := (*unix.RawSockaddrUnix)(unsafe.Pointer(&b.Raw))
		path := unsafe.Slice((*byte)(unsafe.Pointer(&pp.Path[0])), len(pp.Path))
		// The buffer is reused: only the bytes the kernel wrote count.
		n := int(b.Len) - int(unsafe.Offsetof(pp.Path))
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
		if prefix == "@" && len(path) == 0 {
			return Peer{Addr: Addr{kind: PeerUnix}, name: "@"} // unnamed: no string made
		}
		return Peer{Addr: Addr{kind: PeerUnix}, name: prefix + string(path)}
	}
	return Peer{}
}

// Read and Write are read(2) and write(2) on non-blocking sockets.
// They cannot block, so they skip the Go scheduler's bookkeeping for system
// calls that might (entersyscall / exitsyscall): a read and a write per
// message are most of what a loop does.
func Read(fd int, b []byte) (int, error) { return rawIO(unix.SYS_READ, fd, b) }

// Write is write(2) on a non-blocking socket (see Read).
func Write(fd int, b []byte) (int, error) { return rawIO(unix.SYS_WRITE, fd, b) }

func rawIO(trap uintptr, fd int, b []byte) (int, error) {
	var p unsafe.Pointer
	if len(b) > 0 {
		p = unsafe.Pointer(&b[0])
	}
	n, _, e := unix.RawSyscall(trap, uintptr(fd), uintptr(p), uintptr(len(b)))
	if e != 0 {
		return -1, e
	}
	return int(n), nil
}

// Writev is writev(2) on a non-blocking socket.
func Writev(fd int, bufs [][]byte) (int, error) {
	if len(bufs) == 1 {
		return Write(fd, bufs[0])
	}
	var iov [MaxIovecs]unix.Iovec
	for i, b := range bufs {
		iov[i].Base = unsafe.SliceData(b)
		iov[i].SetLen(len(b))
	}
	n, _, e := unix.RawSyscall(unix.SYS_WRITEV, uintptr(fd), uintptr(unsafe.Pointer(&iov[0])), uintptr(len(bufs)))
	if e != 0 {
		return -1, e
	}
	return int(n), nil
}

// UnsentBytes is what the kernel still holds to send on a socket, or -1.
func UnsentBytes(fd int) int {
	n, err := unix.IoctlGetInt(fd, unix.SIOCOUTQ)
	if err != nil {
		return -1
	}
	return n
}

// UnreadBytes is what the kernel holds for us to read on a socket, or -1.
func UnreadBytes(fd int) int {
	var n int32
	if _, _, e := unix.RawSyscall(unix.SYS_IOCTL, uintptr(fd), unix.SIOCINQ, uintptr(unsafe.Pointer(&n))); e != 0 {
		return -1
	}
	return int(n)
}

// SendTo sends p as one datagram to the address in a (as recvmmsg or set left it).
func SendTo(fd int, p []byte, a *AcceptBuf) error {
	var ptr unsafe.Pointer
	if len(p) > 0 {
		ptr = unsafe.Pointer(&p[0])
	}
	_, _, e := unix.Syscall6(unix.SYS_SENDTO, uintptr(fd), uintptr(ptr), uintptr(len(p)), 0,
		uintptr(unsafe.Pointer(&a.Raw)), uintptr(a.Len))
	if e != 0 {
		return e
	}
	return nil
}

// Set makes a hold addr, for SendTo.
func (b *AcceptBuf) Set(addr *net.UDPAddr) {
	if ip4 := addr.IP.To4(); ip4 != nil {
		pp := (*unix.RawSockaddrInet4)(unsafe.Pointer(&b.Raw))
		*pp = unix.RawSockaddrInet4{Family: unix.AF_INET}
		port := (*[2]byte)(unsafe.Pointer(&pp.Port))
		port[0], port[1] = byte(addr.Port>>8), byte(addr.Port)
		copy(pp.Addr[:], ip4)
		b.Len = unix.SizeofSockaddrInet4
		return
	}
	pp := (*unix.RawSockaddrInet6)(unsafe.Pointer(&b.Raw))
	*pp = unix.RawSockaddrInet6{Family: unix.AF_INET6}
	port := (*[2]byte)(unsafe.Pointer(&pp.Port))
	port[0], port[1] = byte(addr.Port>>8), byte(addr.Port)
	copy(pp.Addr[:], addr.IP.To16())
	if addr.Zone != "" {
		if ifi, err := net.InterfaceByName(addr.Zone); err == nil {
			pp.Scope_id = uint32(ifi.Index)
		}
	}
	b.Len = unix.SizeofSockaddrInet6
}

// Socket opens a non-blocking, close-on-exec stream socket in
// one system call.
func Socket(domain int) (int, error) {
	fd, err := unix.Socket(domain, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, os.NewSyscallError("socket", err)
	}
	return fd, nil
}

// SendMore writes b with MSG_MORE: the kernel holds a short segment back
// for what follows at once (Pipe's shutdown of this side, whose FIN then
// rides in the same segment).
func SendMore(fd int, b []byte) (int, error) {
	var p unsafe.Pointer
	if len(b) > 0 {
		p = unsafe.Pointer(&b[0])
	}
	n, _, e := unix.RawSyscall6(unix.SYS_SENDTO, uintptr(fd), uintptr(p), uintptr(len(b)), unix.MSG_MORE|unix.MSG_NOSIGNAL, 0, 0)
	if e != 0 {
		return -1, e
	}
	return int(n), nil
}

// Close closes a descriptor. herd sets no SO_LINGER time on its
// sockets (only 0, to reset), so closing one never waits.
func Close(fd int) error {
	if _, _, e := unix.RawSyscall(unix.SYS_CLOSE, uintptr(fd), 0, 0); e != 0 {
		return e
	}
	return nil
}

// ShutWrite ends our side of a socket's stream (shutdown(2) for writing).
func ShutWrite(fd int) error {
	if _, _, e := unix.RawSyscall(unix.SYS_SHUTDOWN, uintptr(fd), unix.SHUT_WR, 0); e != 0 {
		return e
	}
	return nil
}

// SetNoDelay turns Nagle's algorithm off.
func SetNoDelay(fd int) error {
	one := int32(1)
	if _, _, e := unix.RawSyscall6(unix.SYS_SETSOCKOPT, uintptr(fd), unix.IPPROTO_TCP, unix.TCP_NODELAY, uintptr(unsafe.Pointer(&one)), 4, 0); e != 0 {
		return e
	}
	return nil
}

// putPort stores port in a raw socket address's port field, which is in
// network byte order.
func putPort(field *uint16, port int) {
	b := (*[2]byte)(unsafe.Pointer(field))
	b[0], b[1] = byte(port>>8), byte(port)
}

// Connect starts a non-blocking socket's connect.
func Connect(fd int, sa unix.Sockaddr) error {
	var raw unix.RawSockaddrAny
	var n uintptr
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		p := (*unix.RawSockaddrInet4)(unsafe.Pointer(&raw))
		p.Family = unix.AF_INET
		putPort(&p.Port, sa.Port)
		p.Addr = sa.Addr
		n = unix.SizeofSockaddrInet4
	case *unix.SockaddrInet6:
		p := (*unix.RawSockaddrInet6)(unsafe.Pointer(&raw))
		p.Family = unix.AF_INET6
		putPort(&p.Port, sa.Port)
		p.Scope_id = sa.ZoneId
		p.Addr = sa.Addr
		n = unix.SizeofSockaddrInet6
	default:
		return unix.Connect(fd, sa) // a unix socket's path: x/sys encodes it
	}
	if _, _, e := unix.RawSyscall(unix.SYS_CONNECT, uintptr(fd), uintptr(unsafe.Pointer(&raw)), n); e != 0 {
		return e
	}
	return nil
}

// The ancillary load of a random number in classic BPF (linux/filter.h's
// SKF_AD_OFF + SKF_AD_RANDOM), which x/sys does not define.
const skfAdRandom = 0xfffff000 + 56

// SteerGroup has the kernel hand each new connection of fd's SO_REUSEPORT
// group to one of the group's first n sockets, at random (the program
// returns an index into the group, whose sockets are in the order they
// started listening). Sockets past n get nothing new but keep what waits in
// their queues. Linux 4.5+; attaching again replaces the program.
func SteerGroup(fd, n int) error {
	prog := []unix.SockFilter{
		{Code: unix.BPF_LD | unix.BPF_W | unix.BPF_ABS, K: skfAdRandom},
		{Code: unix.BPF_ALU | unix.BPF_MOD | unix.BPF_K, K: uint32(n)},
		{Code: unix.BPF_RET | unix.BPF_A},
	}
	err := unix.SetsockoptSockFprog(fd, unix.SOL_SOCKET, unix.SO_ATTACH_REUSEPORT_CBPF, &unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]})
	return os.NewSyscallError("setsockopt SO_ATTACH_REUSEPORT_CBPF", err)
}
