//go:build darwin || freebsd

package sock

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
var ReusePortBalances = runtime.GOOS == "freebsd"

// NodelayInherited: not relied on here; each accepted socket gets
// TCP_NODELAY itself.
const NodelayInherited = false

// AcceptBuf holds a datagram's sender (RecvFrom); unix.Accept needs no
// buffer.
type AcceptBuf struct{ SA unix.Sockaddr }

// Set makes a hold addr, for SendTo.
func (b *AcceptBuf) Set(addr *net.UDPAddr) {
	if ip4 := addr.IP.To4(); ip4 != nil {
		b.SA = &unix.SockaddrInet4{Port: addr.Port, Addr: [4]byte(ip4)}
		return
	}
	sa := &unix.SockaddrInet6{Port: addr.Port}
	copy(sa.Addr[:], addr.IP.To16())
	if addr.Zone != "" {
		if ifi, err := net.InterfaceByName(addr.Zone); err == nil {
			sa.ZoneId = uint32(ifi.Index)
		}
	}
	b.SA = sa
}

// Peer is the address RecvFrom left.
func (b *AcceptBuf) Peer() Peer { return PeerFromSockaddr(b.SA) }

// RecvFrom reads one datagram into p and leaves its sender's address in a.
// It returns more than len(p) when the datagram did not fit.
func RecvFrom(fd int, p []byte, a *AcceptBuf) (int, error) {
	n, _, flags, sa, err := unix.Recvmsg(fd, p, nil, 0)
	if err != nil {
		return 0, err
	}
	a.SA = sa
	if flags&unix.MSG_TRUNC != 0 {
		n = len(p) + 1
	}
	return n, nil
}

// SendTo sends p as one datagram to the address in a.
func SendTo(fd int, p []byte, a *AcceptBuf) error { return unix.Sendto(fd, p, 0, a.SA) }

// Accept takes one connection and makes it non-blocking and close-on-exec.
// darwin has no accept4; the window before FD_CLOEXEC is set only matters to
// a program that forks with exec at the same moment.
func Accept(lfd int, _ *AcceptBuf) (int, Peer, error) {
	fd, sa, err := unix.Accept(lfd)
	if err != nil {
		return -1, Peer{}, err
	}
	unix.CloseOnExec(fd)
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return -1, Peer{}, err
	}
	return fd, PeerFromSockaddr(sa), nil
}

// Read is read(2). On darwin system calls go through libc: x/sys/unix's
// wrappers are kept.
func Read(fd int, b []byte) (int, error) { return unix.Read(fd, b) }

// Write is write(2) (see Read).
func Write(fd int, b []byte) (int, error) { return unix.Write(fd, b) }

// Writev writes the buffers in order with write(2), stopping at the
// first that the socket does not take whole (x/sys has no writev on
// FreeBSD; these platforms are not where herd's throughput is measured).
func Writev(fd int, bufs [][]byte) (int, error) {
	total := 0
	for _, b := range bufs {
		n, err := Write(fd, b)
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

// UnreadBytes is what the kernel holds for us to read on a socket, or -1.
func UnreadBytes(fd int) int {
	const fionread = 0x4004667f // _IOR('f', 127, int) on darwin and freebsd; x/sys/unix lacks it
	n, err := unix.IoctlGetInt(fd, fionread)
	if err != nil {
		return -1
	}
	return n
}

// Socket opens a non-blocking, close-on-exec stream socket
// (macOS has no socket flags for it: three system calls).
func Socket(domain int) (int, error) {
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

func Close(fd int) error                     { return unix.Close(fd) }
func ShutWrite(fd int) error                 { return unix.Shutdown(fd, unix.SHUT_WR) }
func SetNoDelay(fd int) error                { return unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1) }
func Connect(fd int, sa unix.Sockaddr) error { return unix.Connect(fd, sa) }

// SendMore is a write: these systems have no MSG_MORE.
func SendMore(fd int, b []byte) (int, error) { return Write(fd, b) }

// SteerGroup: these kernels take no program to choose a group's socket
// (FreeBSD's SO_REUSEPORT_LB hashes); Scale then hands sockets out instead.
func SteerGroup(fd, n int) error { return errors.ErrUnsupported }

// UrgentByteAtMark is false: herd's kqueue is level-triggered, and
// reports again whatever a read left (see the Linux version).
func UrgentByteAtMark(fd int) bool { return false }
