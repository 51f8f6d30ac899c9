package herd

import (
	"bytes"
	"os"
	"sync"
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

// TestUrgentReadAtMarkBounded: reads that keep giving up at the urgent
// mark (as a kernel that reports an urgent byte and drops its segment
// would have them) do not make the loop spin: after eight next-turn
// tries, they wait on a backing-off timer. A read that takes bytes ends
// it. The loop's stand-in for the mark's check says "at the mark" always.
func TestUrgentReadAtMarkBounded(t *testing.T) {
	var got atomic.Int64
	w := &Worker{Addr: "tcp://127.0.0.1:0", Count: 1}
	w.OnMessage = func(c *Conn, msg []byte) { got.Add(int64(len(msg))) }
	c := dialTCP(t, startWorker(t, w).addr)
	c.Write([]byte("a"))
	waitFor(t, 5*time.Second, "the first byte", func() bool { return got.Load() == 1 })

	l := w.Loops()[0]
	var sc *Conn
	var turn0 uint32
	onLoop(t, l, func() {
		for _, x := range l.conns {
			if x != nil {
				sc = x
			}
		}
		l.atMark = func(int) bool { return true }
		l.urgent(sc)
		turn0 = l.turn
		l.read(sc, false, false) // EAGAIN: nothing waits
	})
	time.Sleep(500 * time.Millisecond)
	var turns uint32
	var retries uint8
	onLoop(t, l, func() { turns, retries = l.turn-turn0, sc.rare.markRetries })
	// 8 next-turn tries, then timers at 1, 2, 4, 8 and every 16 ms: about
	// 40 reads in 500 ms, a turn or two each. Read every turn, the loop
	// turns hundreds of thousands of times.
	if turns > 200 {
		t.Errorf("the loop turned %d times in 500 ms while reads gave up at the mark (%d tries counted)", turns, retries)
	}
	if retries != 12 {
		t.Errorf("%d tries at the mark counted in 500 ms, want 12 (8 next-turn, then the timer's doubling to its cap)", retries)
	}

	// The mark passed: a read that takes a byte clears the count.
	onLoop(t, l, func() { l.atMark = func(int) bool { return false } })
	c.Write([]byte("b"))
	waitFor(t, 2*time.Second, "the byte after the tries", func() bool { return got.Load() == 2 })
	var timerSet bool
	onLoop(t, l, func() { retries, timerSet = sc.rare.markRetries, sc.rare.markTimer != nil })
	if retries != 0 || timerSet {
		t.Errorf("a read that took a byte left %d tries counted, a timer set: %v", retries, timerSet)
	}
}

// TestUrgentBytesInBand holds the package documentation to what it says
// of urgent data: an urgent byte is left out and the bytes around it come
// in order; Linux keeps one urgent byte at a time, so one sent before
// another that the reader had not reached comes in band. The loop is held
// while each burst arrives whole.
func TestUrgentBytesInBand(t *testing.T) {
	var mu sync.Mutex
	var got []byte
	w := &Worker{Addr: "tcp://127.0.0.1:0", Count: 1}
	w.OnMessage = func(c *Conn, msg []byte) { mu.Lock(); got = append(got, msg...); mu.Unlock() }
	c := dialTCP(t, startWorker(t, w).addr)
	l := w.Loops()[0]
	for _, tc := range []struct {
		name  string
		parts []string // in band and urgent (a "!" part: sent MSG_OOB) in turn
		want  string
	}{
		{"one urgent byte", []string{"ab", "!", "cd"}, "abcd"},
		{"a second before the first was reached", []string{"ab", "!", "cd", "!", "ef"}, "ab!cdef"},
	} {
		mu.Lock()
		got = nil
		mu.Unlock()
		parked, release := make(chan struct{}), make(chan struct{})
		l.Post(func() { close(parked); <-release })
		<-parked
		for _, p := range tc.parts {
			var err error
			if p == "!" {
				err = sendUrgent(c)
			} else {
				_, err = c.Write([]byte(p))
			}
			if err != nil {
				t.Fatal(err)
			}
		}
		time.Sleep(50 * time.Millisecond) // all in the server's socket
		close(release)
		waitFor(t, 2*time.Second, tc.name+": the bytes delivered", func() bool {
			mu.Lock()
			defer mu.Unlock()
			return len(got) >= len(tc.want)
		})
		time.Sleep(20 * time.Millisecond) // nothing more comes
		mu.Lock()
		if !bytes.Equal(got, []byte(tc.want)) {
			t.Errorf("%s: delivered %q, want %q", tc.name, got, tc.want)
		}
		mu.Unlock()
	}
}
