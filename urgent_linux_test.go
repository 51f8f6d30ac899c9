package herd

import (
	"os"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestUrgentReadUnderSignals: Linux's TCP read gives up at the urgent mark
// with EAGAIN, not a byte read, when a signal is pending on the thread (Go
// sends SIGURG to preempt). Taken for "drained", that left the bytes
// behind the mark unread with nothing more to report them. Here another
// thread sends the loop's thread SIGURG without pause while a client sends
// rounds of a head, an urgent byte and a tail, and waits for each round
// to be delivered whole.
func TestUrgentReadUnderSignals(t *testing.T) {
	const rounds, part = 200, 10
	var got atomic.Int64
	w := &Worker{Addr: "tcp://127.0.0.1:0", Count: 1, LockOSThread: true}
	w.OnMessage = func(c *Conn, msg []byte) { got.Add(int64(len(msg))) }
	c := dialTCP(t, startWorker(t, w).addr)
	l := w.Loops()[0]
	waitFor(t, 5*time.Second, "the loop's thread", func() bool { return l.tid.Load() != 0 })

	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		pid, tid := os.Getpid(), int(l.tid.Load())
		for {
			select {
			case <-stop:
				return
			default:
			}
			unix.Tgkill(pid, tid, unix.SIGURG)
		}
	}()
	defer func() { close(stop); <-done }()

	head, tail := make([]byte, part), make([]byte, part)
	for i := 1; i <= rounds; i++ {
		if _, err := c.Write(head); err != nil {
			t.Fatal(err)
		}
		if err := sendUrgent(c); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Write(tail); err != nil {
			t.Fatal(err)
		}
		want := int64(i * 2 * part)
		deadline := time.Now().Add(2 * time.Second)
		for got.Load() < want {
			if time.Now().After(deadline) {
				t.Fatalf("round %d of %d: %d bytes delivered of %d after 2 s (the rest waits behind the urgent mark)", i, rounds, got.Load(), want)
			}
			time.Sleep(100 * time.Microsecond)
		}
	}
}
