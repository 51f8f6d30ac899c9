package herd

import (
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Accepted connections have TCP_NODELAY although register no longer sets
// it: Linux copies it from the listener.
func TestAcceptedNoDelay(t *testing.T) {
	got := make(chan int, 1)
	w := &Worker{Addr: "tcp://127.0.0.1:0", Count: 1, OnConnect: func(c *Conn) {
		v, err := unix.GetsockoptInt(int(c.fd), unix.IPPROTO_TCP, unix.TCP_NODELAY)
		if err != nil {
			v = -1
		}
		got <- v
	}}
	r := startWorker(t, w)
	c := r.dial(t)
	defer c.Close()
	select {
	case v := <-got:
		if v != 1 {
			t.Fatalf("accepted socket TCP_NODELAY = %d, want 1", v)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no connection")
	}
}
