package sock

import "golang.org/x/sys/unix"

// Splice moves up to n bytes from one descriptor to another without
// waiting; one of them is a pipe. Both are non-blocking and
// SPLICE_F_NONBLOCK keeps the pipe side from waiting, so, as Read, it
// skips the scheduler's bookkeeping for calls that might block: a long
// splice (it sends what it moves, through the TCP stack) would otherwise
// have the runtime's monitor hand the loop's P to another thread.
func Splice(from, to, n int) (int, error) {
	for {
		m, _, e := unix.RawSyscall6(unix.SYS_SPLICE, uintptr(from), 0, uintptr(to), 0, uintptr(n), unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
		if e != unix.EINTR {
			if e != 0 {
				return 0, e
			}
			return int(m), nil
		}
	}
}

// Pipe opens a non-blocking, close-on-exec kernel pipe and asks for size
// bytes of capacity (kept as it is where /proc/sys/fs/pipe-max-size
// refuses).
func Pipe(size int) (r, w int, err error) {
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_NONBLOCK|unix.O_CLOEXEC); err != nil {
		return -1, -1, err
	}
	unix.FcntlInt(uintptr(p[1]), unix.F_SETPIPE_SZ, size)
	return p[0], p[1], nil
}

// AtUrgentMark reports whether the next byte to read from the TCP socket
// fd is where urgent data was sent (SIOCATMARK); false on any error.
func AtUrgentMark(fd int) bool {
	v, err := unix.IoctlGetInt(fd, unix.SIOCATMARK)
	return err == nil && v != 0
}

// UrgentByteAtMark reports whether an urgent byte not yet read is the next
// byte of the TCP socket fd: at the mark (SIOCATMARK) with the byte there
// (POLLPRI). A read that says EAGAIN then did not find the socket empty:
// Linux's TCP read gives up at the mark when a signal is pending.
func UrgentByteAtMark(fd int) bool {
	if !AtUrgentMark(fd) {
		return false
	}
	p := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLPRI}}
	n, err := unix.Poll(p, 0)
	return err == nil && n == 1 && p[0].Revents&unix.POLLPRI != 0
}
