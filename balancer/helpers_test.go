package balancer

import (
	"io"
	"log/slog"
	"net"
	"syscall"
	"testing"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// refusedAddr is a loopback address where a connect is refused: its port
// is held by a socket that is bound and does not listen, so that no other
// listener takes it meanwhile.
func refusedAddr(t *testing.T) string {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	sa, _ := syscall.Getsockname(fd)
	a := sa.(*syscall.SockaddrInet4)
	return (&net.TCPAddr{IP: a.Addr[:], Port: a.Port}).String()
}
