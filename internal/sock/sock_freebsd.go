package sock

import "golang.org/x/sys/unix"

// ReusePort is FreeBSD's load-balancing reuseport group (12.0+).
const ReusePort = unix.SO_REUSEPORT_LB

// fionwrite is FreeBSD's FIONWRITE, _IOR('f', 119, int), which x/sys lacks.
const fionwrite = 0x40046677

// UnsentBytes is what the kernel still holds to send on a socket, or -1.
func UnsentBytes(fd int) int {
	n, err := unix.IoctlGetInt(fd, fionwrite)
	if err != nil {
		return -1
	}
	return n
}
