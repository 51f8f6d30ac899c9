//go:build linux || darwin || freebsd

package herd

import (
	"errors"
	"net"
	"testing"
	"unsafe"
)

// An idle connection's whole cost is its Conn: keep it in the 192-byte
// size class (what few connections use lives in connRare, the send queue
// exists only while something is queued).
func TestConnSize(t *testing.T) {
	if n := unsafe.Sizeof(Conn{}); n > 192 {
		t.Errorf("Conn is %d bytes, over the 192-byte size class", n)
	}
}

// TestErrConnClosedIsNetErrClosed: code written for net.Conn that tests
// errors.Is(err, net.ErrClosed) recognizes what Write returns after a
// close.
func TestErrConnClosedIsNetErrClosed(t *testing.T) {
	accepted := make(chan *Conn, 1)
	w := &Worker{Addr: "tcp://127.0.0.1:0", Count: 1, OnConnect: func(c *Conn) { accepted <- c }}
	r := startWorker(t, w)
	r.dial(t)
	c := acceptedConn(t, accepted)
	c.Close()
	if _, err := c.Write([]byte("late")); !errors.Is(err, net.ErrClosed) || !errors.Is(err, ErrConnClosed) {
		t.Errorf("Write after Close: %v, want ErrConnClosed, which is net.ErrClosed", err)
	}
}
