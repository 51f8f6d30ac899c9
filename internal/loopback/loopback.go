//go:build linux || darwin || freebsd

// Package loopback gives tests loopback addresses that misbehave on
// purpose: one where a connect is refused, one where it hangs. It imports
// nothing of herd's, so that herd's own tests can use it too.
package loopback

import (
	"net"
	"os"
	"syscall"
	"testing"
	"time"
)

// boundSocket is a TCP socket bound to a free loopback port, closed when
// the test ends, and its address.
func boundSocket(t testing.TB) (int, string) {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	a := sa.(*syscall.SockaddrInet4)
	return fd, (&net.TCPAddr{IP: a.Addr[:], Port: a.Port}).String()
}

// RefusedAddr is a loopback address where a connect is refused: its port
// is held by a socket that is bound and does not listen, so that no
// listener of the test can take it meanwhile (as a port freed by closing a
// listener could be).
func RefusedAddr(t testing.TB) string {
	_, addr := boundSocket(t)
	return addr
}

// SilentAddr is a loopback address where a connect hangs: a listener with
// a backlog of one that never accepts, its queue filled, so that the
// kernel drops further SYNs (how a connect timeout is made on loopback).
func SilentAddr(t testing.TB) string {
	t.Helper()
	_, addr, _ := silent(t)
	return addr
}

// silent is SilentAddr, with the listening socket and how many of the
// connections that fill its queue it took.
func silent(t testing.TB) (int, string, int) {
	t.Helper()
	fd, addr := boundSocket(t)
	if err := syscall.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	queued := 0
	for i := 0; i < 4; i++ {
		d := net.Dialer{Timeout: 300 * time.Millisecond}
		if c, err := d.Dial("tcp", addr); err == nil {
			queued++
			t.Cleanup(func() { c.Close() })
		}
	}
	return fd, addr, queued
}

// LateAddr is a SilentAddr that can come up later: open accepts what
// fills its queue and returns its listener, and a connect that hung
// meanwhile then completes at its next SYN (the first retry comes a
// second after the first SYN, the next two seconds later).
func LateAddr(t testing.TB) (addr string, open func() net.Listener) {
	t.Helper()
	fd, addr, queued := silent(t)
	return addr, func() net.Listener {
		t.Helper()
		dup, err := syscall.Dup(fd) // fd is the cleanup's to close
		if err != nil {
			t.Fatal(err)
		}
		f := os.NewFile(uintptr(dup), "late")
		ln, err := net.FileListener(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		for range queued {
			c, err := ln.Accept()
			if err != nil {
				t.Fatal(err)
			}
			c.Close()
		}
		return ln
	}
}
