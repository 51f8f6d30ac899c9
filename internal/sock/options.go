//go:build linux || darwin || freebsd

package sock

import (
	"os"

	"golang.org/x/sys/unix"
)

// Dup duplicates fd, close-on-exec, for a child process or a socket held
// apart from the caller's.
func Dup(fd int) (int, error) {
	nfd, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return -1, os.NewSyscallError("fcntl F_DUPFD_CLOEXEC", err)
	}
	return nfd, nil
}

// SetNonblock makes fd's operations return EAGAIN instead of waiting.
func SetNonblock(fd int) error {
	return os.NewSyscallError("fcntl O_NONBLOCK", unix.SetNonblock(fd, true))
}

// Kind reports fd's socket type (unix.SOCK_STREAM, SOCK_DGRAM) and
// whether it listens; ok is false for a descriptor that is not a socket.
func Kind(fd int) (sotype int, listening, ok bool) {
	sotype, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE)
	if err != nil {
		return 0, false, false
	}
	v, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN)
	return sotype, err == nil && v == 1, true
}

// InReusePortGroup reports whether fd was opened to share its port
// (ReusePort).
func InReusePortGroup(fd int) bool {
	v, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, ReusePort)
	return err == nil && v != 0
}

// PendingError is the socket's pending error (SO_ERROR): a failed connect,
// a reset. Nil if there is none.
func PendingError(fd int) error {
	v, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR)
	switch {
	case err != nil:
		return os.NewSyscallError("getsockopt", err)
	case v != 0:
		return unix.Errno(v)
	}
	return nil
}

// ResetOnClose has the socket's Close send a reset (SO_LINGER 0), or with
// reset false, undoes that: Close then ends the stream with a FIN.
func ResetOnClose(fd int, reset bool) error {
	l := unix.Linger{}
	if reset {
		l.Onoff = 1
	}
	return unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &l)
}

// Name is the address fd is bound to, nil if it cannot be read.
func Name(fd int) unix.Sockaddr {
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return nil
	}
	return sa
}

// Ready reports whether fd is readable now (for a listening socket: a
// connection waits in its queue), without waiting.
func Ready(fd int) bool {
	p := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	n, err := unix.Poll(p, 0)
	return err == nil && n > 0 && p[0].Revents&unix.POLLIN != 0
}
