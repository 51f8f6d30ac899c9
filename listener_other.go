//go:build darwin || freebsd

package herd

import (
	"runtime"

	"golang.org/x/sys/unix"
)

// SO_REUSEPORT balances connections only on Linux, FreeBSD (with
// SO_REUSEPORT_LB, 12.0+) and DragonFly; on macOS and the other BSDs the last
// socket bound gets them all, so there ReusePort falls back to shared accept.
var reusePortBalances = runtime.GOOS == "freebsd"

const exclusiveWakeup = false // kqueue wakes every poller sharing a socket

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
