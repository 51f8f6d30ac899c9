package sock

import "golang.org/x/sys/unix"

// ReusePort is never used to balance on darwin: see ReusePortBalances.
const ReusePort = unix.SO_REUSEPORT

// UnsentBytes is what the kernel still holds to send on a socket, or -1.
func UnsentBytes(fd int) int {
	n, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_NWRITE)
	if err != nil {
		return -1
	}
	return n
}
