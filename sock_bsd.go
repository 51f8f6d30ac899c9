//go:build darwin || freebsd

package herd

// The socket system calls of macOS and FreeBSD, through x/sys/unix (on
// darwin system calls go through libc). What differs between the two is in
// sock_darwin.go and sock_freebsd.go.

import (
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

// acceptBuf is the Linux accept's address buffer; unix.Accept needs none.
type acceptBuf struct{}

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
