//go:build linux || darwin || freebsd

package herd

// What herd owes never goes missing: the backpressure rules of Write and
// Backpressure, held connections, and the faults that used to drop, hang or
// crash. Every test here has a slow or stalled client.

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// slowRead reads exactly len(want) bytes at about rate bytes per second
// (in 16 KiB reads) and compares them with want.
func slowRead(c net.Conn, want []byte, rate int) error {
	c.SetReadDeadline(time.Now().Add(60 * time.Second))
	buf := make([]byte, 16<<10)
	start := time.Now()
	got := 0
	for got < len(want) {
		n, err := c.Read(buf[:min(len(buf), len(want)-got)])
		if n > 0 {
			if !bytes.Equal(buf[:n], want[got:got+n]) {
				return fmt.Errorf("bytes %d..%d differ from what the server sent", got, got+n)
			}
			got += n
			if ahead := time.Duration(got)*time.Second/time.Duration(rate) - time.Since(start); ahead > 0 {
				time.Sleep(ahead)
			}
		}
		if err != nil {
			return fmt.Errorf("after %d of %d bytes: %w", got, len(want), err)
		}
	}
	return nil
}

// Finding 11: with Backpressure, the messages already read when the queue
// crossed the high mark were still delivered, and their replies dropped.
// Now delivery stops at the mark and resumes as the queue drains.
func TestBackpressureHoldsReadInput(t *testing.T) {
	t.Parallel()
	const n = 20000
	reply := bytes.Repeat([]byte("r"), 199) // 200 bytes with the newline
	w := &Worker{Addr: "text://127.0.0.1:0", Count: 1, Backpressure: true,
		OnMessage: func(c *Conn, msg []byte) { c.Send(reply) }}
	r := startWorker(t, w)
	c := r.dialSmallBufs(t, 4096)
	go func() {
		// 160 KB of requests, several read buffers' worth: the server
		// reads them while the client reads nothing.
		c.Write(bytes.Repeat([]byte("1234567\n"), n))
	}()
	time.Sleep(300 * time.Millisecond) // stalled
	want := bytes.Repeat(append(reply, '\n'), n)
	if err := slowRead(c, want, 8<<20); err != nil {
		t.Fatal(err)
	}
	if s := w.Stats().Loops[0]; s.Dropped != 0 || s.MessagesIn != n {
		t.Errorf("Stats: %d messages, %d dropped; want %d and 0", s.MessagesIn, s.Dropped, n)
	}
}

// Write never drops: 24 replies of 1 MiB to a client that first reads
// nothing and then reads at 16 MB/s arrive whole and in order, while
// messages are delivered only below the high mark.
func TestWriteOwedToSlowReader(t *testing.T) {
	t.Parallel()
	const n, size = 24, 1 << 20
	var overMark atomic.Int32
	w := &Worker{Addr: "text://127.0.0.1:0", Count: 1, OnError: func(c *Conn, err error) { t.Errorf("OnError: %v", err) }}
	w.OnMessage = func(c *Conn, msg []byte) {
		if c.SendQueueBytes() >= w.highWater() {
			overMark.Add(1)
		}
		i := int(msg[0] - 'A')
		b := bytes.Repeat([]byte{byte('a' + i)}, size)
		if _, err := c.Write(b); err != nil {
			t.Errorf("Write: %v", err)
		}
	}
	r := startWorker(t, w)
	c := r.dialSmallBufs(t, 16<<10)
	var req []byte
	for i := 0; i < n; i++ {
		req = append(req, byte('A'+i), '\n')
	}
	if _, err := c.Write(req); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	var want []byte
	for i := 0; i < n; i++ {
		want = append(want, bytes.Repeat([]byte{byte('a' + i)}, size)...)
	}
	if err := slowRead(c, want, 16<<20); err != nil {
		t.Fatal(err)
	}
	if k := overMark.Load(); k != 0 {
		t.Errorf("%d messages were delivered with the queue above the high mark", k)
	}
	if s := w.Stats().Loops[0]; s.Dropped != 0 {
		t.Errorf("Stats Dropped = %d", s.Dropped)
	}
}

// A goroutine that streams with WaitWritable and Write keeps the queue
// near the high mark, however slow the reader; when the reader goes away,
// the producer learns it (ErrConnClosed) instead of waiting forever.
func TestWaitWritableStream(t *testing.T) {
	t.Parallel()
	const chunk, total = 64 << 10, 8 << 20
	payload := regressPayload(total)
	var peak atomic.Int64
	streamed := make(chan error, 2)
	w := &Worker{Addr: "tcp://127.0.0.1:0", Count: 1}
	w.OnConnect = func(c *Conn) {
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			for off := 0; off < total; off += chunk {
				if err := c.WaitWritable(ctx); err != nil {
					streamed <- err
					return
				}
				if _, err := c.Write(payload[off : off+chunk]); err != nil {
					streamed <- err
					return
				}
				if q := int64(c.SendQueueBytes()); q > peak.Load() {
					peak.Store(q)
				}
			}
			streamed <- nil
		}()
	}
	r := startWorker(t, w)

	c := r.dialSmallBufs(t, 16<<10)
	time.Sleep(100 * time.Millisecond) // stalled at first
	if err := slowRead(c, payload, 20<<20); err != nil {
		t.Fatal(err)
	}
	if err := <-streamed; err != nil {
		t.Fatalf("producer: %v", err)
	}
	if p, bound := peak.Load(), int64(w.highWater()+chunk); p > bound {
		t.Errorf("queue peaked at %d bytes; WaitWritable should keep it under %d", p, bound)
	}

	// A reader that leaves mid-stream.
	c2 := r.dialSmallBufs(t, 16<<10)
	if _, err := io.ReadFull(c2, make([]byte, 1<<20)); err != nil {
		t.Fatal(err)
	}
	c2.Close()
	select {
	case err := <-streamed:
		if !errors.Is(err, ErrConnClosed) {
			t.Errorf("producer after the reader left: %v, want ErrConnClosed", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("producer still waiting 10s after its reader left")
	}
}

// Finding 12: IdleTimeout closed a connection whose reply was being made on
// another goroutine (Hold), and the reply was dropped.
func TestIdleTimeoutSparesHeld(t *testing.T) {
	t.Parallel()
	const idle = 100 * time.Millisecond
	w := &Worker{Addr: "text://127.0.0.1:0", Count: 1, IdleTimeout: idle}
	w.OnMessage = func(c *Conn, msg []byte) {
		m := string(msg)
		c.Hold()
		go func() {
			defer c.Release()
			time.Sleep(5 * idle)
			c.Send([]byte("late " + m))
		}()
	}
	r := startWorker(t, w)
	c := r.dial(t)
	br := bufio.NewReader(c)
	io.WriteString(c, "q\n")
	line, err := br.ReadString('\n')
	if err != nil || line != "late q\n" {
		t.Fatalf("reply %q, %v; want \"late q\\n\"", line, err)
	}
	// Once released, the connection is idle again and closed.
	expectClosed(t, c, "idle after the reply")
}

// Finding 5 (core part): a peer that half-closes right after its request
// is answered when the reply comes from another goroutine under Hold.
func TestHalfCloseAnsweredWhileHeld(t *testing.T) {
	t.Parallel()
	w := &Worker{Addr: "text://127.0.0.1:0", Count: 1}
	w.OnMessage = func(c *Conn, msg []byte) {
		m := string(msg)
		c.Hold()
		go func() {
			defer c.Release()
			time.Sleep(20 * time.Millisecond)
			if _, err := c.Write([]byte("re " + m + "\n")); err != nil {
				t.Errorf("Write after the peer's half-close: %v", err)
			}
		}()
	}
	r := startWorker(t, w)
	var wg sync.WaitGroup
	errs := make(chan error, 20)
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := net.Dial("tcp", r.addr)
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			fmt.Fprintf(c, "a%d\nb%d\n", i, i)
			c.(*net.TCPConn).CloseWrite()
			got, err := io.ReadAll(c)
			// Two goroutines answer: in either order.
			want, other := fmt.Sprintf("re a%d\nre b%d\n", i, i), fmt.Sprintf("re b%d\nre a%d\n", i, i)
			if err != nil || (string(got) != want && string(got) != other) {
				errs <- fmt.Errorf("conn %d: got %q, %v; want %q", i, got, err, want)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// panicky is a protocol whose Input panics on a line "boom" and returns a
// negative length on a line "neg".
type panicky struct{}

func (panicky) Input(b []byte) (int, error) {
	i := bytes.IndexByte(b, '\n')
	switch {
	case i < 0:
		return 0, nil
	case string(b[:i]) == "boom":
		panic("boom")
	case string(b[:i]) == "neg":
		return -1, nil
	}
	return i + 1, nil
}
func (panicky) Decode(p []byte) []byte {
	if string(p) == "dec\n" {
		panic("decode")
	}
	return p[:len(p)-1]
}
func (panicky) Encode(dst, m []byte) []byte { return append(append(dst, m...), '\n') }

// Finding 14: a panic in Protocol.Input or Decode killed the process, and a
// negative length panicked inside herd. Each now closes that connection
// with an error; the loop serves the others.
func TestProtocolFaultsCloseConn(t *testing.T) {
	t.Parallel()
	var errs errorLog
	w := &Worker{Addr: "tcp://127.0.0.1:0", Count: 1, Protocol: panicky{}, OnMessage: textEcho, OnError: errs.add}
	r := startWorker(t, w)
	for i, line := range []string{"boom", "neg", "dec"} {
		c := r.dial(t)
		br := bufio.NewReader(c)
		echoLine(t, c, br, "fine")
		io.WriteString(c, line+"\n")
		expectClosed(t, c, line)
		err := errs.wait(t, i+1)
		if line == "neg" {
			if !strings.Contains(err.Error(), "negative") {
				t.Errorf("%s: OnError %v", line, err)
			}
		} else if !errors.Is(err, ErrPanic) {
			t.Errorf("%s: OnError %v, want ErrPanic", line, err)
		}
	}
	c := r.dial(t)
	echoLine(t, c, bufio.NewReader(c), "still serving")
}

// Finding 15: OnBufferDrain ran after Abort had discarded the queue, and a
// Release without a Hold drove the count negative (a later Hold then did
// not keep the connection through a graceful stop).
func TestAbortAndReleaseEdges(t *testing.T) {
	t.Parallel()
	conns := make(chan *Conn, 2)
	var drains atomic.Int32
	closed := make(chan struct{}, 2)
	w := &Worker{Addr: "tcp://127.0.0.1:0", Count: 1, MaxSendBufferSize: 64 << 10,
		OnConnect:     func(c *Conn) { conns <- c },
		OnBufferDrain: func(c *Conn) { drains.Add(1) },
		OnClose:       func(c *Conn) { closed <- struct{}{} }}
	r := startWorker(t, w)
	cl := r.dialSmallBufs(t, 4096)
	c := acceptedConn(t, conns)
	for c.Send(make([]byte, 16<<10)) != Dropped {
	}
	c.Abort()
	go io.Copy(io.Discard, cl) // the socket becomes writable again
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("no OnClose after Abort")
	}
	onLoop(t, c.Loop(), func() {})
	if n := drains.Load(); n != 0 {
		t.Errorf("OnBufferDrain ran %d times after Abort", n)
	}

	cl2 := r.dial(t)
	c2 := acceptedConn(t, conns)
	c2.Release() // no Hold: ignored
	c2.Release()
	c2.Hold()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	go func() {
		time.Sleep(100 * time.Millisecond)
		c2.Send([]byte("held reply"))
		c2.Release()
	}()
	go w.Shutdown(ctx)
	got, _ := io.ReadAll(cl2)
	if string(got) != "held reply" {
		t.Errorf("through a graceful stop, the held connection got %q", got)
	}
}

// Finding 16: a client that reads nothing made one report (and, in the
// examples, one log line) per burst of drops. Reports now come at most
// once a second per connection, and their counts add up to DroppedFull.
func TestDropReportsOncePerSecond(t *testing.T) {
	t.Parallel()
	start := time.Now()
	drops, calls, w := dropHammer(t, 20000)
	elapsed := time.Since(start)
	if max := int(elapsed/dropReportInterval) + 2; calls > max {
		t.Errorf("%d OnError reports in %v for %d drops; want at most %d", calls, elapsed, drops, max)
	}
	if s := w.Stats().Loops[0]; s.DroppedFull != uint64(drops) {
		t.Errorf("Stats DroppedFull = %d, want %d", s.DroppedFull, drops)
	}
}

// Finding 17: a packet that never completes grew the connection's input
// buffer by doubling, up to about twice MaxPackageSize. It now stays within
// MaxPackageSize plus one read buffer until the connection is refused.
func TestUnfinishedPacketBounded(t *testing.T) {
	t.Parallel()
	const limit = 1 << 20
	conns := make(chan *Conn, 1)
	var errs errorLog
	w := &Worker{Addr: "text://127.0.0.1:0", Count: 1, MaxPackageSize: limit, OnMessage: textEcho,
		OnConnect: func(c *Conn) { conns <- c }, OnError: errs.add}
	r := startWorker(t, w)
	cl := r.dialSmallBufs(t, 16<<10)
	c := acceptedConn(t, conns)
	chunk := bytes.Repeat([]byte("x"), 48<<10)
	peak := 0
	for sent := 0; sent < 3*limit; sent += len(chunk) {
		if _, err := cl.Write(chunk); err != nil {
			break // refused: closed
		}
		time.Sleep(time.Millisecond) // a slow sender: many reads
		onLoop(t, c.Loop(), func() { peak = max(peak, cap(c.in)) })
	}
	if err := errs.wait(t, 1); !errors.Is(err, ErrPackageTooLarge) {
		t.Errorf("OnError %v, want ErrPackageTooLarge", err)
	}
	if bound := limit + readBufferSize; peak > bound {
		t.Errorf("input buffer grew to %d bytes; bound %d", peak, bound)
	}
	t.Logf("input buffer peaked at %d bytes for a %d-byte limit", peak, limit)
}

// Finding 13: a large send from a goroutine held the connection's lock
// across writes until the socket was full (with a fast reader, the whole
// transfer) and across the copy of the rest; the loop, writing the queue,
// did not return to the others until the socket was full either. Now the
// sender makes one write and copies the rest before taking the lock, and
// the loop writes at most maxFlush of one connection per turn. Both are
// counted: the bytes out when SendRaw returns, and the loop's turns during
// the transfer.
func TestLargeSendLeavesLoopFree(t *testing.T) {
	t.Parallel()
	const size = 128 << 20
	conns := make(chan *Conn, 2)
	w := &Worker{Addr: "text://127.0.0.1:0", Count: 1, MaxSendBufferSize: -1,
		OnConnect: func(c *Conn) { conns <- c }, OnMessage: textEcho}
	r := startWorker(t, w)
	big := r.dial(t)
	bc := acceptedConn(t, conns)
	other := r.dial(t)
	<-conns
	br := bufio.NewReader(other)
	echoLine(t, other, br, "warm")

	done := make(chan error, 1)
	go func() { // a fast reader
		_, err := io.CopyN(io.Discard, big, size)
		done <- err
	}()
	before := w.Stats().Loops[0]
	bc.SendRaw(make([]byte, size))
	after := w.Stats().Loops[0]
	if out := after.BytesOut - before.BytesOut; out > 8<<20 {
		t.Errorf("SendRaw wrote %d bytes before returning: more than one write", out)
	}
	echoes := 0
	for waiting := true; waiting; {
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("big transfer: %v", err)
			}
			waiting = false
		default:
			echoLine(t, other, br, "ping")
			echoes++
		}
	}
	turns := w.Stats().Loops[0].Wakeups - after.Wakeups
	t.Logf("%d loop turns and %d echoes on another connection while %d MiB went out", turns, echoes, size>>20)
	if min := uint64((size - 8<<20) / maxFlush); turns < min {
		t.Errorf("the transfer took %d loop turns; at most %d bytes per turn means at least %d", turns, maxFlush, min)
	}
}
