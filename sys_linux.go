package herd

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// sysRead and sysWrite are read(2) and write(2) on non-blocking sockets.
// They cannot block, so they skip the Go scheduler's bookkeeping for system
// calls that might (entersyscall / exitsyscall): a read and a write per
// message are most of what a loop does.
func sysRead(fd int, b []byte) (int, error)  { return rawIO(unix.SYS_READ, fd, b) }
func sysWrite(fd int, b []byte) (int, error) { return rawIO(unix.SYS_WRITE, fd, b) }

func rawIO(trap uintptr, fd int, b []byte) (int, error) {
	var p unsafe.Pointer
	if len(b) > 0 {
		p = unsafe.Pointer(&b[0])
	}
	n, _, e := unix.RawSyscall(trap, uintptr(fd), uintptr(p), uintptr(len(b)))
	if e != 0 {
		return -1, e
	}
	return int(n), nil
}

// writeVec is writev(2) on a non-blocking socket.
func writeVec(fd int, bufs [][]byte) (int, error) {
	if len(bufs) == 1 {
		return sysWrite(fd, bufs[0])
	}
	var iov [maxIovecs]unix.Iovec
	for i, b := range bufs {
		iov[i].Base = unsafe.SliceData(b)
		iov[i].SetLen(len(b))
	}
	n, _, e := unix.RawSyscall(unix.SYS_WRITEV, uintptr(fd), uintptr(unsafe.Pointer(&iov[0])), uintptr(len(bufs)))
	if e != 0 {
		return -1, e
	}
	return int(n), nil
}
