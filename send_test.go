//go:build linux || darwin || freebsd

package herd

// Sending: Send and its drop policy, Write and WaitWritable (what is owed),
// Backpressure, the buffer callbacks, Abort. Every test has a slow or
// stalled client.

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/seed358e4494/herd/internal/soak"
	"github.com/seed358e4494/herd/internal/sock"
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

// Owed-bytes finding 11: with Backpressure, the messages already read when
// the queue crossed the high mark were still delivered, and their replies
// dropped. Now delivery stops at the mark and resumes as the queue drains.
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
	n, size := 24, 1<<20
	if !soak.Enabled() {
		n = 8 // 8 MiB owed: 16 times the high mark
	}
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
	payload := offsetPayload(total)
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

// Owed-bytes finding 15: OnBufferDrain ran after Abort had discarded the
// queue, and a Release without a Hold drove the count negative (a later Hold
// then did not keep the connection through a graceful stop).
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
	c2.Release() // deprecated, and no Hold: ignored
	// A Hold released twice ends itself once: the other Hold still keeps
	// the connection through the stop for its reply.
	mine, other := c2.Hold(), c2.Hold()
	mine.Release()
	mine.Release()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	go func() {
		time.Sleep(100 * time.Millisecond)
		c2.Send([]byte("held reply"))
		other.Release()
	}()
	go w.Shutdown(ctx)
	got, _ := io.ReadAll(cl2)
	if string(got) != "held reply" {
		t.Errorf("through a graceful stop, the held connection got %q", got)
	}
}

// Owed-bytes finding 16: a client that reads nothing made one report (and,
// in the examples, one log line) per burst of drops. Reports now come at
// most once a second per connection, and their counts add up to DroppedFull.
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

// Owed-bytes finding 13: a large send from a goroutine held the connection's
// lock across writes until the socket was full (with a fast reader, the
// whole transfer) and across the copy of the rest; the loop, writing the
// queue, did not return to the others until the socket was full either. Now
// the sender makes one write and copies the rest before taking the lock, and
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
		_, err := io.CopyBuffer(io.Discard, io.LimitReader(big, size), make([]byte, 4<<20))
		done <- err
	}()
	// The loop waits in a task while SendRaw runs, so that what the
	// second look counts is SendRaw's own write, not the loop's flush of
	// the queue meanwhile. A fixed send buffer bounds one write(2): here it
	// stopped at the buffer's size exactly, and a second write, with the
	// fast reader draining, added 44 to 140 KiB.
	unix.SetsockoptInt(int(bc.fd), unix.SOL_SOCKET, unix.SO_SNDBUF, 64<<10)
	sndbuf, err := unix.GetsockoptInt(int(bc.fd), unix.SOL_SOCKET, unix.SO_SNDBUF)
	if err != nil {
		t.Fatal(err)
	}
	parked, release := make(chan struct{}), make(chan struct{})
	bc.Loop().Post(func() { close(parked); <-release })
	<-parked
	before := w.Stats().Loops[0]
	bc.SendRaw(make([]byte, size))
	after := w.Stats().Loops[0]
	close(release)
	if out := after.BytesOut - before.BytesOut; out > uint64(sndbuf+16<<10) {
		t.Errorf("SendRaw wrote %d bytes before returning, with a send buffer of %d: more than one write", out, sndbuf)
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
	t.Logf("SendRaw wrote %d bytes itself; %d loop turns and %d echoes on another connection while %d MiB went out", after.BytesOut-before.BytesOut, turns, echoes, size>>20)
	// maxFlush bounds one writable event's flush; a turn can serve the
	// connection twice (listed from the last turn, and reported again by
	// the poller), and the reader's pace varies, so the bound checked is
	// loose: the transfer is spread over turns, and the other connection
	// is answered meanwhile (before, the loop did neither until the socket
	// was full, which with a fast reader is the whole transfer).
	if min := uint64(size / (8 * maxFlush)); turns < min || echoes < 5 {
		t.Errorf("the transfer took %d loop turns and let %d echoes through; want at least %d turns and 5 echoes", turns, echoes, min)
	}
}

func TestSendConcurrentFromGoroutines(t *testing.T) {
	t.Parallel()
	const senders, perSender, pings = 8, 2000, 2000
	var written, queued, dropped atomic.Int64
	sendersDone := make(chan struct{})
	w := &Worker{
		Addr:  "frame://127.0.0.1:0",
		Count: 2,
		// A small server socket buffer (set from inside the package), so
		// that what the client does not read yet waits in herd's queue.
		OnConnect: func(c *Conn) { unix.SetsockoptInt(int(c.fd), unix.SOL_SOCKET, unix.SO_SNDBUF, 64<<10) },
		OnMessage: func(c *Conn, msg []byte) {
			switch {
			case string(msg) == "start":
				var wg sync.WaitGroup
				for g := 0; g < senders; g++ {
					wg.Add(1)
					go func() {
						defer wg.Done()
						for i := 0; i < perSender; i++ {
							switch c.Send(dataMsg(g, i)) {
							case Written:
								written.Add(1)
							case Queued:
								queued.Add(1)
							default:
								dropped.Add(1)
							}
						}
					}()
				}
				go func() { wg.Wait(); close(sendersDone) }()
			case bytes.HasPrefix(msg, []byte("ping ")):
				// Answered on the loop while the goroutines send.
				c.Send(append([]byte("pong "), msg[5:]...))
			}
		},
	}
	// Everything sent fits in the default send queue, so no Send may drop
	// however slowly the client reads.
	total := 0
	for g := 0; g < senders; g++ {
		for i := 0; i < perSender; i++ {
			total += 4 + len(dataMsg(g, i))
		}
	}
	total += pings * (4 + len("pong 0000"))
	if total >= DefaultMaxSendBufferSize {
		t.Fatalf("test sends %d bytes, more than the default send queue", total)
	}
	r := startWorker(t, w)
	// Small client buffers: the socket fills and the server queues, so the
	// goroutines' Sends mix direct writes and appends to the queue.
	cl := r.dialSmallBufs(t, 8192)

	writeErr := make(chan error, 1)
	go func() {
		bw := bufio.NewWriter(cl)
		bw.Write(appendFrame(nil, []byte("start")))
		for k := 0; k < pings; k++ {
			bw.Write(appendFrame(nil, []byte("ping "+strconv.Itoa(k))))
			if k%50 == 49 {
				if err := bw.Flush(); err != nil {
					writeErr <- err
					return
				}
			}
		}
		writeErr <- bw.Flush()
	}()

	// Read only once the server has had to queue (or the senders are done),
	// so that the goroutines' Sends race with the loop's flushing.
	waitFor(t, 20*time.Second, "a send queue or the senders' end", func() bool {
		select {
		case <-sendersDone:
			return true
		default:
			return sumStats(w).queued > 0
		}
	})
	br := bufio.NewReaderSize(cl, 64<<10)
	next := make([]int, senders)
	nextPong, data := 0, 0
	for data < senders*perSender || nextPong < pings {
		msg, err := readFrame(br)
		if err != nil {
			t.Fatalf("after %d data frames and %d pongs: %v", data, nextPong, err)
		}
		if bytes.HasPrefix(msg, []byte("pong ")) {
			if want := "pong " + strconv.Itoa(nextPong); string(msg) != want {
				t.Fatalf("got %q, want %q", msg, want)
			}
			nextPong++
			continue
		}
		var g, i int
		if _, err := fmt.Sscanf(string(msg), "d %d %d ", &g, &i); err != nil || g < 0 || g >= senders {
			t.Fatalf("corrupt frame %q", msg)
		}
		if i != next[g] {
			t.Fatalf("sender %d: got message %d, want %d (lost or reordered)", g, i, next[g])
		}
		if !bytes.Equal(msg, dataMsg(g, i)) {
			t.Fatalf("sender %d message %d corrupted: %q", g, i, msg)
		}
		next[g]++
		data++
	}
	if err := <-writeErr; err != nil {
		t.Fatalf("client write: %v", err)
	}
	select {
	case <-sendersDone:
	case <-time.After(10 * time.Second):
		t.Fatal("senders did not finish")
	}
	if d := dropped.Load(); d != 0 {
		t.Errorf("%d Sends returned Dropped with default limits", d)
	}
	if n := written.Load() + queued.Load(); n != senders*perSender {
		t.Errorf("Written+Queued = %d, want %d", n, senders*perSender)
	}
	t.Logf("written %d, queued %d", written.Load(), queued.Load())
	if s := sumStats(w); s.dropped != 0 {
		t.Errorf("Stats Dropped = %d", s.dropped)
	}
}

func TestAbortDiscardsQueue(t *testing.T) {
	t.Parallel()
	const chunk, chunks = 1 << 20, 8
	conns := make(chan *Conn, 1)
	closed := make(chan struct{})
	var closes atomic.Int32
	w := &Worker{
		Addr:              "tcp://127.0.0.1:0",
		Count:             1,
		MaxSendBufferSize: -1, // unlimited: everything queues
		OnConnect:         func(c *Conn) { conns <- c },
		OnClose: func(c *Conn) {
			if closes.Add(1) == 1 {
				close(closed)
			}
		},
	}
	r := startWorker(t, w)
	cl := r.dialSmallBufs(t, 4096)
	c := acceptedConn(t, conns)
	data := bytes.Repeat([]byte("abcdefgh"), chunk/8)
	for i := 0; i < chunks; i++ {
		if res := c.Send(data); res == Dropped {
			t.Fatalf("Send %d dropped", i)
		}
	}
	q := c.SendQueueBytes()
	if q == 0 {
		t.Fatalf("nothing queued after sending %d bytes to a client that does not read", chunk*chunks)
	}
	if s := sumStats(w); s.queued != int64(q) {
		t.Errorf("Stats SendQueueBytes = %d, Conn.SendQueueBytes = %d", s.queued, q)
	}
	c.Abort()
	// Closed at once: the client has not read anything.
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("OnClose did not run after Abort while the client was not reading")
	}
	if res := c.Send([]byte("late")); res != Dropped {
		t.Errorf("Send after Abort = %v, want Dropped", res)
	}
	if q := c.SendQueueBytes(); q != 0 {
		t.Errorf("queue after Abort: %d bytes", q)
	}
	if s := sumStats(w); s.queued != 0 || s.active != 0 {
		t.Errorf("after Abort: Stats SendQueueBytes = %d, active = %d", s.queued, s.active)
	}
	got, err := io.Copy(io.Discard, cl)
	if err != nil && !isReset(err) {
		t.Fatalf("client read: %v", err)
	}
	if got >= chunk*chunks {
		t.Errorf("client got %d bytes: the queue (%d bytes) was not discarded", got, q)
	}
	t.Logf("queued %d at Abort; client received %d of %d", q, got, chunk*chunks)
	if n := closes.Load(); n != 1 {
		t.Errorf("OnClose ran %d times", n)
	}
}

func TestSendBufferFull(t *testing.T) {
	t.Parallel()
	const max, chunk = 256 << 10, 64 << 10
	conns := make(chan *Conn, 1)
	var fulls, drains, fullErrs, otherErrs atomic.Int32
	drained := make(chan struct{}, 1)
	w := &Worker{
		Addr:              "tcp://127.0.0.1:0",
		Count:             1,
		MaxSendBufferSize: max,
		OnConnect:         func(c *Conn) { conns <- c },
		OnBufferFull:      func(c *Conn) { fulls.Add(1) },
		OnBufferDrain: func(c *Conn) {
			drains.Add(1)
			select {
			case drained <- struct{}{}:
			default:
			}
		},
		OnError: func(c *Conn, err error) {
			if errors.Is(err, ErrSendBufferFull) {
				fullErrs.Add(1)
			} else {
				otherErrs.Add(1)
			}
		},
	}
	r := startWorker(t, w)
	cl := r.dialSmallBufs(t, 4096)
	c := acceptedConn(t, conns)

	// Send 64 KiB chunks to a client that does not read, until 5 drops.
	chunkData := func(k int) []byte {
		b := bytes.Repeat([]byte{byte(k*31 + 7)}, chunk)
		copy(b, fmt.Sprintf("%08d", k))
		return b
	}
	var accepted []int
	drops := 0
	maxQueue := int64(0)
	for k := 0; drops < 5; k++ {
		if k > 2000 {
			t.Fatalf("no drop after sending %d bytes to a client that does not read", k*chunk)
		}
		res := c.Send(chunkData(k))
		switch res {
		case Dropped:
			drops++
		default:
			accepted = append(accepted, k)
		}
		if q := int64(c.SendQueueBytes()); q > maxQueue {
			maxQueue = q
		}
		if q := sumStats(w).queued; q > maxQueue {
			maxQueue = q
		}
	}
	if maxQueue > max+chunk {
		t.Errorf("send queue reached %d bytes, limit %d + one message %d", maxQueue, max, chunk)
	}
	waitFor(t, 10*time.Second, "OnBufferFull", func() bool { return fulls.Load() >= 1 })
	// Drops are reported once per burst (each report names how many).
	waitFor(t, 10*time.Second, "OnError(ErrSendBufferFull)", func() bool { return fullErrs.Load() >= 1 })
	if n := fullErrs.Load(); n > int32(drops) {
		t.Errorf("%d ErrSendBufferFull reports for %d drops", n, drops)
	}
	if d := sumStats(w).dropped; d != uint64(drops) {
		t.Errorf("Stats Dropped = %d, want %d", d, drops)
	}
	if n := drains.Load(); n != 0 {
		t.Errorf("OnBufferDrain ran %d times before the client read", n)
	}
	if n := fulls.Load(); n != 1 {
		t.Errorf("OnBufferFull ran %d times, want 1 (the queue never drained)", n)
	}

	// Now the client reads everything that was not dropped, in order.
	want := len(accepted) * chunk
	br := bufio.NewReaderSize(cl, chunk)
	buf := make([]byte, chunk)
	for i, k := range accepted {
		if _, err := io.ReadFull(br, buf); err != nil {
			t.Fatalf("reading chunk %d of %d (%d bytes expected): %v", i, len(accepted), want, err)
		}
		if !bytes.Equal(buf, chunkData(k)) {
			t.Fatalf("chunk %d: got header %q, want chunk %d", i, buf[:8], k)
		}
	}
	select {
	case <-drained:
	case <-time.After(10 * time.Second):
		t.Fatal("OnBufferDrain did not run after the client read everything")
	}
	if s := sumStats(w); s.queued != 0 {
		t.Errorf("queue after drain: %d", s.queued)
	}
	if res := c.Send([]byte("again")); res != Written {
		t.Errorf("Send after drain = %v, want Written", res)
	}
	if n := otherErrs.Load(); n != 0 {
		t.Errorf("%d unexpected OnError calls", n)
	}
	t.Logf("accepted %d chunks, dropped %d, max queue %d", len(accepted), drops, maxQueue)
}

func TestBackpressureOption(t *testing.T) {
	t.Parallel()
	const max = 256 << 10
	conns := make(chan *Conn, 1)
	w := &Worker{
		Addr:              "tcp://127.0.0.1:0",
		Count:             1,
		MaxSendBufferSize: max,
		Backpressure:      true,
		OnConnect:         func(c *Conn) { conns <- c },
		OnMessage:         func(c *Conn, msg []byte) { c.Send(msg) },
	}
	r := startWorker(t, w)
	cl := r.dialSmallBufs(t, 8192)
	c := acceptedConn(t, conns)

	pattern := func(off int64, b []byte) {
		for i := range b {
			b[i] = byte((off + int64(i)) % 251)
		}
	}
	var stop atomic.Bool
	var written atomic.Int64
	writerDone := make(chan error, 1)
	go func() {
		buf := make([]byte, 32<<10)
		for !stop.Load() {
			pattern(written.Load(), buf)
			n, err := cl.Write(buf)
			written.Add(int64(n))
			if err != nil {
				writerDone <- err
				return
			}
		}
		writerDone <- nil
	}()

	// Wait until the server has stopped reading: its input no longer grows
	// while the client still has data to write.
	var maxQueue int64
	lastIn, stable := uint64(0), 0
	deadline := time.Now().Add(20 * time.Second)
	for stable < 8 {
		if time.Now().After(deadline) {
			t.Fatalf("server never stopped reading (bytes in %d, client wrote %d)", lastIn, written.Load())
		}
		time.Sleep(25 * time.Millisecond)
		s := w.Stats().Loops[0]
		maxQueue = max64(maxQueue, s.SendQueueBytes)
		if s.Dropped > 0 {
			t.Fatalf("%d messages dropped: the server kept reading and queueing", s.Dropped)
		}
		c.mu.Lock()
		paused := c.flags.Load()&flagBackpressure != 0
		c.mu.Unlock()
		if s.BytesIn == lastIn && s.BytesIn > 0 && paused {
			stable++
		} else {
			stable, lastIn = 0, s.BytesIn
		}
		select {
		case err := <-writerDone:
			t.Fatalf("writer ended before the server pushed back: %v", err)
		default:
		}
	}
	s := sumStats(w)
	if s.dropped != 0 {
		t.Errorf("Backpressure dropped %d messages", s.dropped)
	}
	if limit := int64(max + readBufferSize); maxQueue > limit || s.queued > limit {
		t.Errorf("send queue reached %d bytes (now %d), want <= %d", maxQueue, s.queued, limit)
	}
	if s.queued == 0 {
		t.Errorf("nothing queued while the client does not read")
	}
	c.mu.Lock()
	paused, readOn := c.flags.Load()&flagBackpressure != 0, c.readOn
	c.mu.Unlock()
	if !paused || readOn {
		t.Errorf("connection not paused by backpressure: backpressure=%v readOn=%v", paused, readOn)
	}
	t.Logf("server paused after reading %d bytes; queue %d (max seen %d); client wrote %d", lastIn, s.queued, maxQueue, written.Load())

	// Now read everything back; the writer finishes its last write.
	stop.Store(true)
	buf := make([]byte, 64<<10)
	want := make([]byte, len(buf))
	var got int64
	total := int64(-1)
	for total < 0 || got < total {
		if total < 0 {
			select {
			case err := <-writerDone:
				if err != nil {
					t.Fatalf("client write: %v", err)
				}
				total = written.Load()
				continue
			default:
			}
		}
		n, err := cl.Read(buf)
		pattern(got, want[:n])
		if !bytes.Equal(buf[:n], want[:n]) {
			t.Fatalf("echoed bytes at offset %d differ", got)
		}
		got += int64(n)
		if err != nil {
			t.Fatalf("client read after %d bytes: %v", got, err)
		}
		if q := sumStats(w).queued; q > maxQueue {
			maxQueue = q
		}
	}
	if got != total {
		t.Fatalf("got %d bytes back, sent %d", got, total)
	}
	s = sumStats(w)
	if s.dropped != 0 {
		t.Errorf("Backpressure dropped %d messages", s.dropped)
	}
	if maxQueue > max+readBufferSize {
		t.Errorf("send queue reached %d bytes", maxQueue)
	}
	if in := w.Stats().Loops[0].BytesIn; in != uint64(total) {
		t.Errorf("server read %d bytes, client wrote %d", in, total)
	}
}

func max64(a, b int64) int64 {
	if a > b {
		return a
	}
	return b
}

// OnBufferFull and OnBufferDrain alternate, starting with OnBufferFull,
// even when a queue filled by another goroutine drains before the loop has
// run the OnBufferFull that Send posted.
func TestBufferFullDrainOrder(t *testing.T) {
	t.Parallel()
	conns := make(chan *Conn, 1)
	var events []byte // appended on the loop only
	w := &Worker{
		Addr:              "tcp://127.0.0.1:0",
		Count:             1,
		MaxSendBufferSize: 64 << 10,
		OnConnect: func(c *Conn) {
			// A small socket buffer: most of each Send is queued.
			unix.SetsockoptInt(int(c.fd), unix.SOL_SOCKET, unix.SO_SNDBUF, 64<<10)
			conns <- c
		},
		OnBufferFull:  func(c *Conn) { events = append(events, 'F') },
		OnBufferDrain: func(c *Conn) { events = append(events, 'D') },
	}
	r := startWorker(t, w)
	cl := r.dial(t)
	c := acceptedConn(t, conns)
	go io.Copy(io.Discard, cl) // a fast reader: queues fill and drain at once
	chunk := bytes.Repeat([]byte("x"), 512<<10)
	sends := 400
	if !soak.Enabled() {
		sends = 100
	}
	deadline := time.Now().Add(20 * time.Second)
	for i := 0; i < sends && time.Now().Before(deadline); i++ {
		// Send once the queue is empty again, so that it fills often.
		for c.SendQueueBytes() > 0 && time.Now().Before(deadline) {
			time.Sleep(20 * time.Microsecond)
		}
		c.Send(chunk)
	}
	waitFor(t, 20*time.Second, "the queue to drain", func() bool { return c.SendQueueBytes() == 0 })
	var ev []byte
	onLoop(t, c.Loop(), func() { ev = slices.Clone(events) })
	if len(ev) == 0 {
		t.Fatal("the queue never filled")
	}
	for i, e := range ev {
		if want := "FD"[i%2]; e != want {
			t.Fatalf("event %d of %d is %c, want %c: %s", i, len(ev), e, want, ev[max(0, i-10):min(len(ev), i+10)])
		}
	}
	if len(ev)%2 != 0 {
		t.Errorf("%d events: the last OnBufferFull has no OnBufferDrain", len(ev))
	}
	t.Logf("%d full/drain pairs", len(ev)/2)
}

func TestPeerResetMidSend(t *testing.T) {
	t.Parallel()
	logs := &syncBuffer{}
	conns := make(chan *Conn, 4)
	closed := make(chan *Conn, 4)
	var errs errorLog
	senderDone := make(chan int, 1)
	w := &Worker{
		Addr:      "tcp://127.0.0.1:0",
		Count:     1,
		Logger:    slog.New(slog.NewTextHandler(logs, nil)),
		OnConnect: func(c *Conn) { conns <- c },
		OnClose:   func(c *Conn) { closed <- c },
		OnError:   errs.add,
		OnMessage: func(c *Conn, msg []byte) {
			if string(msg) != "flood" {
				c.Send(msg)
				return
			}
			go func() {
				chunk := bytes.Repeat([]byte("F"), 64<<10)
				sent := 0
				for i := 0; i < 5000; i++ { // bounded: 320 MB at most
					if c.Send(chunk) == Dropped {
						if c.state.Load() != connOpen {
							break
						}
						time.Sleep(time.Millisecond) // queue full: wait
						continue
					}
					sent++
				}
				senderDone <- sent
			}()
		},
	}
	r := startWorker(t, w)
	other := r.dial(t)
	obr := bufio.NewReader(other)
	otherConn := acceptedConn(t, conns)
	echoLine(t, other, obr, "before")

	victim := r.dial(t)
	victimConn := acceptedConn(t, conns)
	if _, err := io.WriteString(victim, "flood"); err != nil {
		t.Fatal(err)
	}
	// Read some of the flood so the server is surely sending, then reset.
	if _, err := io.CopyN(io.Discard, victim, 1<<20); err != nil {
		t.Fatalf("reading the flood: %v", err)
	}
	if err := victim.(*net.TCPConn).SetLinger(0); err != nil {
		t.Fatal(err)
	}
	victim.Close()

	select {
	case c := <-closed:
		if c != victimConn {
			t.Fatalf("OnClose for connection %d, want the reset one %d", c.ID(), victimConn.ID())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the reset connection was not closed")
	}
	select {
	case sent := <-senderDone:
		t.Logf("sender stopped after %d chunks", sent)
	case <-time.After(10 * time.Second):
		t.Fatal("the sender kept sending to a reset connection")
	}
	echoLine(t, other, obr, "after")
	c3 := r.dial(t)
	echoLine(t, c3, bufio.NewReader(c3), "new one")
	if s := sumStats(w); s.active != 2 {
		t.Errorf("active = %d, want 2", s.active)
	}
	for _, err := range errs.list() {
		if !errors.Is(err, ErrSendBufferFull) {
			t.Errorf("unexpected OnError: %v", err)
		}
	}
	if strings.Contains(logs.String(), "panic") {
		t.Errorf("log mentions a panic:\n%s", logs.String())
	}
	_ = otherConn
}

// dropHammer fills the send queue of a connection whose client never
// reads, has a goroutine call Send on it hammer times, and waits (bounded)
// until the OnError reports account for every drop. It returns the drops,
// the number of OnError calls, and the worker.
func dropHammer(t *testing.T, hammer int) (drops, calls int, w *Worker) {
	t.Helper()
	conns := make(chan *Conn, 1)
	var mu sync.Mutex
	var reports []error
	w = &Worker{
		Addr:              "tcp://127.0.0.1:0",
		Count:             1,
		MaxSendBufferSize: 64 << 10,
		OnConnect:         func(c *Conn) { conns <- c },
		OnError: func(c *Conn, err error) {
			mu.Lock()
			reports = append(reports, err)
			mu.Unlock()
		},
	}
	r := startWorker(t, w)
	_ = r.dialSmallBufs(t, 4096) // never reads
	c := acceptedConn(t, conns)

	// Fill the queue.
	chunk := bytes.Repeat([]byte("q"), 16<<10)
	for i := 0; drops == 0; i++ {
		if i > 1000 {
			t.Fatal("no drop after 16 MB sent to a client that does not read")
		}
		if c.Send(chunk) == Dropped {
			drops++
		}
	}
	done := make(chan int, 1)
	go func() {
		d := 0
		one := []byte("x")
		for i := 0; i < hammer; i++ {
			if c.Send(one) == Dropped {
				d++
			}
		}
		done <- d
	}()
	select {
	case d := <-done:
		drops += d
	case <-time.After(20 * time.Second):
		t.Fatal("the hammering goroutine did not finish")
	}
	if drops < hammer {
		t.Fatalf("only %d drops: the queue did not stay full", drops)
	}

	countRe := regexp.MustCompile(`\((\d+) message\(s\)\)`)
	reported := func() (calls, total int, bad []string) {
		mu.Lock()
		defer mu.Unlock()
		for _, err := range reports {
			calls++
			m := countRe.FindStringSubmatch(err.Error())
			if !errors.Is(err, ErrSendBufferFull) || m == nil {
				if len(bad) < 3 {
					bad = append(bad, err.Error())
				}
				continue
			}
			k, _ := strconv.Atoi(m[1])
			total += k
		}
		return
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		calls, total, bad := reported()
		if len(bad) > 0 {
			t.Fatalf("%d OnError calls; unexpected ones (want ErrSendBufferFull naming the number of messages): %q", calls, bad)
		}
		if total == drops {
			break
		}
		if total > drops || time.Now().After(deadline) {
			t.Fatalf("OnError reports name %d dropped messages in %d calls; %d were dropped", total, calls, drops)
		}
		time.Sleep(5 * time.Millisecond)
	}
	onLoop(t, c.Loop(), func() {}) // any report still on its way
	calls, total, _ := reported()
	if total != drops {
		t.Errorf("OnError reports name %d dropped messages, want %d", total, drops)
	}
	if d := sumStats(w).dropped; d != uint64(drops) {
		t.Errorf("Stats Dropped = %d, want %d", d, drops)
	}
	return drops, calls, w
}

// Regression: every message dropped on a full queue posted its own task and
// OnError call. They are now coalesced: each report names how many messages
// it covers, and Stats still counts every drop.
func TestDropReportsCoalesced(t *testing.T) {
	t.Parallel()
	drops, calls, _ := dropHammer(t, 10000)
	t.Logf("%d drops reported in %d OnError calls", drops, calls)
	// One call per drop before the fix. How far below that it gets depends
	// on how often the loop wakes during the burst (a report per wake-up at
	// most); a quarter leaves a wide margin.
	if calls > drops/4 {
		t.Errorf("%d OnError calls for %d drops: reports are not coalesced", calls, drops)
	}
}

// The send queue gives back exactly what was pushed, in order, across
// small pushes, pushes larger than a buffer and owned buffers, written in
// pieces to a socket that takes a little at a time; and a push never grows
// (so never copies) the buffer it appends to.
func TestSendQueueOrder(t *testing.T) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer sock.Close(fds[0])
	defer sock.Close(fds[1])
	unix.SetNonblock(fds[0], true)
	unix.SetsockoptInt(fds[0], unix.SOL_SOCKET, unix.SO_SNDBUF, 4096)

	want := offsetPayload(3 << 20)
	q := newSendQueue()
	defer q.free()
	rest := want
	for i := 0; len(rest) > 0; i++ {
		n := min(len(rest), []int{1, 100, 5000, 70 << 10, 300 << 10}[i%5])
		if n == 300<<10 {
			q.pushOwned(bytes.Clone(rest[:n]))
		} else {
			caps := make([]int, len(q.bufs))
			for j, b := range q.bufs {
				caps[j] = cap(b)
			}
			q.push(rest[:n])
			for j := range caps {
				if cap(q.bufs[j]) != caps[j] {
					t.Fatalf("push %d grew buffer %d from %d to %d bytes", i, j, caps[j], cap(q.bufs[j]))
				}
			}
		}
		rest = rest[n:]
	}
	if q.n != len(want) {
		t.Fatalf("queue holds %d bytes, want %d", q.n, len(want))
	}
	var got []byte
	buf := make([]byte, 64<<10)
	for q.n > 0 {
		if _, err := q.writeTo(fds[0]); err != nil {
			t.Fatal(err)
		}
		n, err := unix.Read(fds[1], buf)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, buf[:n]...)
	}
	for len(got) < len(want) {
		n, err := unix.Read(fds[1], buf)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, buf[:n]...)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("bytes out differ from bytes pushed")
	}
}
