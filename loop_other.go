//go:build darwin || freebsd

package herd

import "golang.org/x/sys/unix"

func threadID() int { return 0 }

func threadSwitches(int) uint64 { return 0 }

// unreadBytes is what the kernel holds for us to read on a socket, or -1.
func unreadBytes(fd int) int {
	const fionread = 0x4004667f // _IOR('f', 127, int) on darwin and freebsd; x/sys/unix lacks it
	n, err := unix.IoctlGetInt(fd, fionread)
	if err != nil {
		return -1
	}
	return n
}
