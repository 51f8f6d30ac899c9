package herd

import "golang.org/x/sys/unix"

// soReusePort is never used to balance on darwin: see reusePortBalances.
const soReusePort = unix.SO_REUSEPORT

// unsentBytes is what the kernel still holds to send on a socket, or -1.
func unsentBytes(fd int) int {
	n, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_NWRITE)
	if err != nil {
		return -1
	}
	return n
}
