package herd

import (
	"crypto/sha256"
	"io"
	"testing"
	"time"
)

// TestSpliceEndAtUrgentMark: a spliced read meets the urgent mark after
// the peer has ended its stream, before the loop has seen the poller's
// report of the urgent data (a read the loop serves again at the start of
// a turn comes before that turn's reports). splice(2) says 0 there, as at
// the end of the stream: the pipe must not end the stream early, and
// bytes after the urgent byte still reach the backend.
func TestSpliceEndAtUrgentMark(t *testing.T) {
	const head, tail = 1 << 20, 100
	h := sha256.New()
	writeStream(h, 1, head)
	writeStream(h, 2, tail)
	want := [32]byte(h.Sum(nil))
	backendGot := make(chan streamGot, 1)
	ln := sumBackend(t, backendGot)
	p := startPipeProxy(t, ln.Addr().String(), 1, true)
	c := dialTCP(t, p.addr)
	if err := writeStream(c, 1, head); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the head forwarded", func() bool { return p.w.Stats().Loops[0].BytesOut >= head })

	// Hold the loop while the urgent byte, the tail and the end arrive,
	// then read the client as the start of a turn would.
	l := p.w.Loops()[0]
	parked, release, done := make(chan struct{}), make(chan struct{}), make(chan struct{})
	l.Post(func() {
		close(parked)
		<-release
		defer close(done)
		for _, sc := range l.conns {
			if sc == nil || sc.flags.Load()&flagDialed != 0 {
				continue
			}
			if e, ok := sc.h.(*pipeEnd); ok {
				e.bulk = true // as after a large splice
				l.read(sc, false, false)
				return
			}
		}
		t.Error("no client pipe end on the loop")
	})
	<-parked
	if err := sendUrgent(c); err != nil {
		t.Fatal(err)
	}
	if err := writeStream(c, 2, tail); err != nil {
		t.Fatal(err)
	}
	c.CloseWrite()
	time.Sleep(50 * time.Millisecond) // in the proxy's socket by now
	close(release)
	<-done

	io.Copy(io.Discard, c)
	g := <-backendGot
	if g.err != nil || g.n != head+tail || g.sum != want {
		t.Errorf("the backend got %d bytes (want %d), intact %v, err %v", g.n, head+tail, g.sum == want, g.err)
	}
	if r := p.result(t); !r.clean || r.aToB != head+tail {
		t.Errorf("pipe reported %d bytes forwarded (want %d), clean %v", r.aToB, head+tail, r.clean)
	}
}
