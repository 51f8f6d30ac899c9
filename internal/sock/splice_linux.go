package sock

import "golang.org/x/sys/unix"

// Splice moves up to n bytes from one descriptor to another without
// waiting; one of them is a pipe.
func Splice(from, to, n int) (int, error) {
	for {
		m, err := unix.Splice(from, nil, to, nil, n, unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
		if err != unix.EINTR {
			return int(m), err
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
