//go:build darwin || freebsd

package herd

// The socket system calls of macOS and FreeBSD, through x/sys/unix (on
// darwin system calls go through libc). What differs between the two is in
// sock_darwin.go and sock_freebsd.go.

import (
	"errors"
	"net"
	"os"
	"runtime"

	"golang.org/x/sys/unix"
)

// SO_REUSEPORT balances connections only on Linux, FreeBSD (with
// SO_REUSEPORT_LB, 12.0+) and DragonFly; on macOS and the other BSDs the last
// socket bound gets them all, so there ReusePort falls back to shared accept.
var reusePortBalances = runtime.GOOS == "freebsd"

// nodelayInherited: not relied on here; each accepted socket gets
// TCP_NODELAY itself.
const nodelayInherited = false

// acceptBuf holds a datagram's sender (recvFrom); unix.Accept needs no
// buffer.
type acceptBuf struct{ sa unix.Sockaddr }

// set makes a hold addr, for sendTo.
func (b *acceptBuf) set(addr *net.UDPAddr) {
	if ip4 := addr.IP.To4(); ip4 != nil {
		b.sa = &unix.SockaddrInet4{Port: addr.Port, Addr: [4]byte(ip4)}
		return
	}
	sa := &unix.SockaddrInet6{Port: addr.Port}
	copy(sa.Addr[:], addr.IP.To16())
	if addr.Zone != "" {
		if ifi, err := net.InterfaceByName(addr.Zone); err == nil {
			sa.ZoneId = uint32(ifi.Index)
		}
	}
	b.sa = sa
}

// peer is the address recvFrom left.
func (b *acceptBuf) peer() peerAddr { return peerFromSockaddr(b.sa) }

// recvFrom reads one datagram into p and leaves its sender's address in a.
// It returns more than len(p) when the datagram did not fit.
func recvFrom(fd int, p []byte, a *acceptBuf) (int, error) {
	n, _, flags, sa, err := unix.Recvmsg(fd, p, nil, 0)
	if err != nil {
		return 0, err
	}
	a.sa = sa
	if flags&unix.MSG_TRUNC != 0 {
		n = len(p) + 1
	}
	return n, nil
}

// sendTo sends p as one datagram to the address in a.
func sendTo(fd int, p []byte, a *acceptBuf) error { return unix.Sendto(fd, p, 0, a.sa) }

// accept takes one connection and makes it non-blocking and close-on-exec.
// darwin has no accept4; the window before FD_CLOEXEC is set only matters to
// a program that forks with exec at the same moment.
func accept(lfd int, _ *acceptBuf) (int, peerAddr, error) {
	fd, sa, err := unix.Accept(lfd)
	if err != nil {
		return -1, peerAddr{}, err
	}
	unix.CloseOnExec(fd)
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return -1, peerAddr{}, err
	}
	return fd, peerFromSockaddr(sa), nil
}

// On darwin system calls go through libc; keep x/sys/unix's wrappers.
func sysRead(fd int, b []byte) (int, error)  { return unix.Read(fd, b) }
func sysWrite(fd int, b []byte) (int, error) { return unix.Write(fd, b) }

// writeVec writes the buffers in order with write(2), stopping at the
// first that the socket does not take whole (x/sys has no writev on
// FreeBSD; these platforms are not where herd's throughput is measured).
func writeVec(fd int, bufs [][]byte) (int, error) {
	total := 0
	for _, b := range bufs {
		n, err := sysWrite(fd, b)
		if n > 0 {
			total += n
		}
		if err != nil {
			if total > 0 && err == unix.EAGAIN {
				return total, nil
			}
			return total, err
		}
		if n < len(b) {
			break
		}
	}
	return total, nil
}

// unreadBytes is what the kernel holds for us to read on a socket, or -1.
func unreadBytes(fd int) int {
	const fionread = 0x4004667f // _IOR('f', 127, int) on darwin and freebsd; x/sys/unix lacks it
	n, err := unix.IoctlGetInt(fd, fionread)
	if err != nil {
		return -1
	}
	return n
}

// nonblockingSocket opens a non-blocking, close-on-exec stream socket
// (macOS has no socket flags for it: three system calls).
func nonblockingSocket(domain int) (int, error) {
	fd, err := unix.Socket(domain, unix.SOCK_STREAM, 0)
	if err != nil {
		return -1, os.NewSyscallError("socket", err)
	}
	unix.CloseOnExec(fd)
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return -1, os.NewSyscallError("setnonblock", err)
	}
	return fd, nil
}

func sysClose(fd int) error                     { return unix.Close(fd) }
func shutWrite(fd int) error                    { return unix.Shutdown(fd, unix.SHUT_WR) }
func setNoDelay(fd int) error                   { return unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1) }
func sysConnect(fd int, sa unix.Sockaddr) error { return unix.Connect(fd, sa) }

// sendMore is a write: these systems have no MSG_MORE.
func sendMore(fd int, b []byte) (int, error) { return sysWrite(fd, b) }

// steerGroup: these kernels take no program to choose a group's socket
// (FreeBSD's SO_REUSEPORT_LB hashes); Scale then hands sockets out instead.
func steerGroup(fd, n int) error { return errors.ErrUnsupported }
