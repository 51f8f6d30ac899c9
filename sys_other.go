//go:build darwin || freebsd

package herd

import "golang.org/x/sys/unix"

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
