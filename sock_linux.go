package herd

// The socket system calls of Linux. Those a loop makes for each
// connection (accept4, connect, setsockopt, read, write, writev, sendto,
// shutdown, close, and the ioctl that tells what is unread) are raw system
// calls: on a non-blocking socket none of them waits, so they skip the Go
// scheduler's bookkeeping for calls that might (entersyscall, exitsyscall).
// That bookkeeping costs more than its ~100ns: over loopback, a connect or
// a close runs the peer's side of TCP too and can take 20µs, after which
// the runtime's sysmon hands the loop's P to another thread, which wakes
// for nothing (a close and a connect were 40% of a proxying loop's time).

import (
	"net"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Linux hashes each new connection over the sockets of a SO_REUSEPORT
// group, so per-loop listeners share the load evenly (Linux 3.9+).
const (
	reusePortBalances = true
	soReusePort       = unix.SO_REUSEPORT
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

// sysRead and sysWrite are read(2) and write(2) on non-blocking sockets.
// They cannot block, so they skip the Go scheduler's bookkeeping for system
// calls that might (entersyscall / exitsyscall): a read and a write per
// message are most of what a loop does.
func sysRead(fd int, b []byte) (int, error)  { return rawIO(unix.SYS_READ, fd, b) }
func sysWrite(fd int, b []byte) (int, error) { return rawIO(unix.SYS_WRITE, fd, b) }

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

// writeVec is writev(2) on a non-blocking socket.
func writeVec(fd int, bufs [][]byte) (int, error) {
	if len(bufs) == 1 {
		return sysWrite(fd, bufs[0])
	}
	var iov [maxIovecs]unix.Iovec
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

// unsentBytes is what the kernel still holds to send on a socket, or -1.
func unsentBytes(fd int) int {
	n, err := unix.IoctlGetInt(fd, unix.SIOCOUTQ)
	if err != nil {
		return -1
	}
	return n
}

// unreadBytes is what the kernel holds for us to read on a socket, or -1.
func unreadBytes(fd int) int {
	var n int32
	if _, _, e := unix.RawSyscall(unix.SYS_IOCTL, uintptr(fd), unix.SIOCINQ, uintptr(unsafe.Pointer(&n))); e != 0 {
		return -1
	}
	return int(n)
}

// sendTo sends p as one datagram to the address in a (as recvmmsg or set left it).
func sendTo(fd int, p []byte, a *acceptBuf) error {
	var ptr unsafe.Pointer
	if len(p) > 0 {
		ptr = unsafe.Pointer(&p[0])
	}
	_, _, e := unix.Syscall6(unix.SYS_SENDTO, uintptr(fd), uintptr(ptr), uintptr(len(p)), 0,
		uintptr(unsafe.Pointer(&a.rsa)), uintptr(a.n))
	if e != 0 {
		return e
	}
	return nil
}

// set makes a hold addr, for sendTo.
func (b *acceptBuf) set(addr *net.UDPAddr) {
	if ip4 := addr.IP.To4(); ip4 != nil {
		pp := (*unix.RawSockaddrInet4)(unsafe.Pointer(&b.rsa))
		*pp = unix.RawSockaddrInet4{Family: unix.AF_INET}
		port := (*[2]byte)(unsafe.Pointer(&pp.Port))
		port[0], port[1] = byte(addr.Port>>8), byte(addr.Port)
		copy(pp.Addr[:], ip4)
		b.n = unix.SizeofSockaddrInet4
		return
	}
	pp := (*unix.RawSockaddrInet6)(unsafe.Pointer(&b.rsa))
	*pp = unix.RawSockaddrInet6{Family: unix.AF_INET6}
	port := (*[2]byte)(unsafe.Pointer(&pp.Port))
	port[0], port[1] = byte(addr.Port>>8), byte(addr.Port)
	copy(pp.Addr[:], addr.IP.To16())
	if addr.Zone != "" {
		if ifi, err := net.InterfaceByName(addr.Zone); err == nil {
			pp.Scope_id = uint32(ifi.Index)
		}
	}
	b.n = unix.SizeofSockaddrInet6
}

// nonblockingSocket opens a non-blocking, close-on-exec stream socket in
// one system call.
func nonblockingSocket(domain int) (int, error) {
	fd, err := unix.Socket(domain, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, os.NewSyscallError("socket", err)
	}
	return fd, nil
}

// sendMore writes b with MSG_MORE: the kernel holds a short segment back
// for what follows at once (Pipe's shutdown of this side, whose FIN then
// rides in the same segment).
func sendMore(fd int, b []byte) (int, error) {
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

// sysClose closes a descriptor. herd sets no SO_LINGER time on its
// sockets (only 0, to reset), so closing one never waits.
func sysClose(fd int) error {
	if _, _, e := unix.RawSyscall(unix.SYS_CLOSE, uintptr(fd), 0, 0); e != 0 {
		return e
	}
	return nil
}

// shutWrite ends our side of a socket's stream (shutdown(2) for writing).
func shutWrite(fd int) error {
	if _, _, e := unix.RawSyscall(unix.SYS_SHUTDOWN, uintptr(fd), unix.SHUT_WR, 0); e != 0 {
		return e
	}
	return nil
}

// setNoDelay turns Nagle's algorithm off.
func setNoDelay(fd int) error {
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

// sysConnect starts a non-blocking socket's connect.
func sysConnect(fd int, sa unix.Sockaddr) error {
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

// steerGroup has the kernel hand each new connection of fd's SO_REUSEPORT
// group to one of the group's first n sockets, at random (the program
// returns an index into the group, whose sockets are in the order they
// started listening). Sockets past n get nothing new but keep what waits in
// their queues. Linux 4.5+; attaching again replaces the program.
func steerGroup(fd, n int) error {
	prog := []unix.SockFilter{
		{Code: unix.BPF_LD | unix.BPF_W | unix.BPF_ABS, K: skfAdRandom},
		{Code: unix.BPF_ALU | unix.BPF_MOD | unix.BPF_K, K: uint32(n)},
		{Code: unix.BPF_RET | unix.BPF_A},
	}
	err := unix.SetsockoptSockFprog(fd, unix.SOL_SOCKET, unix.SO_ATTACH_REUSEPORT_CBPF, &unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]})
	return os.NewSyscallError("setsockopt SO_ATTACH_REUSEPORT_CBPF", err)
}
