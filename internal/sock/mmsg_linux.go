package sock

// recvmmsg and sendmmsg: a batch of datagrams per system call. Written by
// hand: Go's net package reads one datagram per call, and x/sys/unix has
// no recvmmsg/sendmmsg.

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// Mmsghdr is the kernel's struct mmsghdr; Go lays it out as C does (the
// trailing padding on 64-bit comes from Msghdr's alignment).
type Mmsghdr struct {
	Hdr unix.Msghdr
	Len uint32 // bytes received or sent
}

// SetRecv readies m to receive one datagram into iov, its sender's
// address into from and its control messages into ctl.
func (m *Mmsghdr) SetRecv(from *unix.RawSockaddrAny, iov *unix.Iovec, ctl []byte) {
	*m = Mmsghdr{Hdr: unix.Msghdr{Name: (*byte)(unsafe.Pointer(from)), Namelen: unix.SizeofSockaddrAny, Iov: iov, Control: &ctl[0]}}
	m.Hdr.SetIovlen(1)
	m.Hdr.SetControllen(len(ctl))
}

// SetSend readies m to send iov to the address in to.
func (m *Mmsghdr) SetSend(to *AcceptBuf, iov *unix.Iovec) {
	*m = Mmsghdr{Hdr: unix.Msghdr{Name: (*byte)(unsafe.Pointer(&to.Raw)), Namelen: to.Len, Iov: iov}}
	m.Hdr.SetIovlen(1)
}

// Recvmmsg reads up to len(msgs) datagrams, without waiting: fd is
// non-blocking, so this is a raw system call, as read and write are
// (no entersyscall/exitsyscall around it).
func Recvmmsg(fd int, msgs []Mmsghdr) (int, error) {
	r, _, e := unix.RawSyscall6(unix.SYS_RECVMMSG, uintptr(fd), uintptr(unsafe.Pointer(&msgs[0])), uintptr(len(msgs)), 0, 0, 0)
	if e != 0 {
		return 0, e
	}
	return int(r), nil
}

// Sendmmsg sends the datagrams msgs describe, and returns how many the
// kernel took; on a non-blocking fd, as Recvmmsg, a raw system call.
func Sendmmsg(fd int, msgs []Mmsghdr) (int, error) {
	r, _, e := unix.RawSyscall6(unix.SYS_SENDMMSG, uintptr(fd), uintptr(unsafe.Pointer(&msgs[0])), uintptr(len(msgs)), 0, 0, 0)
	if e != 0 {
		return 0, e
	}
	return int(r), nil
}

// Drops is the socket's drop counter now (SO_MEMINFO; 0 on kernels that
// do not give it).
func Drops(fd int) uint32 {
	// x/sys has no getter for SO_MEMINFO's array of uint32; the kernel
	// copies as much of it as the buffer takes, and a TCPInfo is larger.
	info, err := unix.GetsockoptTCPInfo(fd, unix.SOL_SOCKET, unix.SO_MEMINFO)
	if err != nil {
		return 0
	}
	return (*[unix.SK_MEMINFO_VARS]uint32)(unsafe.Pointer(info))[unix.SK_MEMINFO_DROPS]
}

// ControlUint32 is the uint32 of the control message at the start of
// ctl when it is level's typ and the kernel wrote it whole (n bytes of
// control in all).
func ControlUint32(ctl []byte, n, level, typ int) (uint32, bool) {
	if n < unix.CmsgLen(4) {
		return 0, false
	}
	h := (*unix.Cmsghdr)(unsafe.Pointer(&ctl[0]))
	if int(h.Level) != level || int(h.Type) != typ {
		return 0, false
	}
	return *(*uint32)(unsafe.Pointer(&ctl[unix.CmsgLen(0)])), true
}
