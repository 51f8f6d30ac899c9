//go:build darwin || freebsd

package herd

import "golang.org/x/sys/unix"

// On darwin system calls go through libc; keep x/sys/unix's wrappers.
func sysRead(fd int, b []byte) (int, error)  { return unix.Read(fd, b) }
func sysWrite(fd int, b []byte) (int, error) { return unix.Write(fd, b) }
