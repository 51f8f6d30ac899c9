//go:build linux || darwin || freebsd

package herd

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// acceptedConn returns the next server-side connection reported by
// OnConnect through ch.
func acceptedConn(t testing.TB, ch <-chan *Conn) *Conn {
	t.Helper()
	select {
	case c := <-ch:
		return c
	case <-time.After(10 * time.Second):
		t.Fatalf("no connection reached OnConnect within 10s")
		return nil
	}
}

// loopsOf waits until every loop of w ran OnWorkerStart (reported through
// started) and returns them.
func loopsOf(t testing.TB, w *Worker, started *atomic.Int32) []*Loop {
	t.Helper()
	waitFor(t, 10*time.Second, "OnWorkerStart on every loop", func() bool {
		return int(started.Load()) == w.Count
	})
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.loops)
}

// dataMsg is the message number i of sender g in TestSendConcurrentFromGoroutines:
// its length varies and every byte depends on g and i, so that a torn or
// interleaved frame does not parse back.
func dataMsg(g, i int) []byte {
	head := fmt.Sprintf("d %d %d ", g, i)
	n := (i*37 + g*11) % 80
	b := make([]byte, 0, len(head)+n)
	b = append(b, head...)
	for k := 0; k < n; k++ {
		b = append(b, byte('a'+(g+i+k)%26))
	}
	return b
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

func TestCloseFromGoroutine(t *testing.T) {
	t.Parallel()
	const n = 3000 // ~600 KB: under the default send queue limit
	var closes atomic.Int32
	closed := make(chan struct{}, 1)
	results := make(chan []SendResult, 1)
	w := &Worker{
		Addr:  "frame://127.0.0.1:0",
		Count: 1,
		OnMessage: func(c *Conn, msg []byte) {
			if string(msg) != "go" {
				return
			}
			go func() {
				var rs []SendResult
				for i := 0; i < n; i++ {
					rs = append(rs, c.Send([]byte(fmt.Sprintf("%06d %s", i, strings.Repeat("x", 193)))))
				}
				c.Close()
				rs = append(rs, c.Send([]byte("after close")))
				results <- rs
			}()
		},
		OnClose: func(c *Conn) {
			closes.Add(1)
			closed <- struct{}{}
		},
	}
	r := startWorker(t, w)
	cl := r.dial(t)
	if _, err := cl.Write(appendFrame(nil, []byte("go"))); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(cl)
	for i := 0; i < n; i++ {
		msg, err := readFrame(br)
		if err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		if want := fmt.Sprintf("%06d %s", i, strings.Repeat("x", 193)); string(msg) != want {
			t.Fatalf("message %d: got %.20q", i, msg)
		}
	}
	if b, err := br.ReadByte(); err != io.EOF {
		t.Fatalf("after %d messages: got byte %q, err %v; want EOF", n, b, err)
	}
	rs := <-results
	for i, res := range rs[:n] {
		if res == Dropped {
			t.Fatalf("Send %d before Close returned Dropped", i)
		}
	}
	if rs[n] != Dropped {
		t.Errorf("Send after Close returned %v, want Dropped", rs[n])
	}
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("OnClose did not run")
	}
	onLoop(t, w.loops[0], func() {}) // let any extra OnClose happen
	if c := closes.Load(); c != 1 {
		t.Errorf("OnClose ran %d times, want 1", c)
	}
}

// closeWorker answers "req" with "ok" and closes with the given method, and
// reports each OnClose on closed.
func closeWorker(closeFn func(*Conn), closed chan<- struct{}) *Worker {
	return &Worker{
		Addr:        "text://127.0.0.1:0",
		Count:       1,
		StopTimeout: 30 * time.Second, // a linger would outlast the test
		OnMessage: func(c *Conn, msg []byte) {
			if string(msg) == "req" {
				c.Send([]byte("ok"))
				closeFn(c)
			}
		},
		OnClose: func(*Conn) { closed <- struct{}{} },
	}
}

// readReplyThenEOF reads "ok\n" and then expects a clean end of stream.
func readReplyThenEOF(t *testing.T, cl net.Conn) {
	t.Helper()
	got, err := io.ReadAll(cl)
	if err != nil {
		t.Fatalf("after %q: %v (want a clean end of stream)", got, err)
	}
	if string(got) != "ok\n" {
		t.Fatalf("got %q, want %q", got, "ok\n")
	}
}

// CloseNoLinger closes as soon as the reply is written, while the client,
// having read the reply and the end of stream, keeps its side open; Close
// waits for the client's side.
func TestCloseNoLinger(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		closeFn func(*Conn)
		lingers bool
	}{
		{"CloseNoLinger", (*Conn).CloseNoLinger, false},
		// In a later loop turn than the read: the kernel is asked
		// whether input waits.
		{"CloseNoLinger later", func(c *Conn) {
			go func() {
				time.Sleep(20 * time.Millisecond)
				c.CloseNoLinger()
			}()
		}, false},
		{"Close", (*Conn).Close, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			closed := make(chan struct{}, 1)
			r := startWorker(t, closeWorker(tc.closeFn, closed))
			cl := r.dial(t)
			if _, err := io.WriteString(cl, "req\n"); err != nil {
				t.Fatal(err)
			}
			readReplyThenEOF(t, cl)
			select {
			case <-closed:
				if tc.lingers {
					t.Fatal("closed while the client's side was still open")
				}
			case <-time.After(500 * time.Millisecond):
				if !tc.lingers {
					t.Fatal("OnClose did not run within 500ms of the reply; the close lingered")
				}
			}
			cl.Close()
			if tc.lingers {
				select {
				case <-closed:
				case <-time.After(10 * time.Second):
					t.Fatal("OnClose did not run after the client closed")
				}
			}
		})
	}
}

// CloseNoLinger with input still unread in the kernel lingers after all:
// closing then would reset the connection.
func TestCloseNoLingerWithInputWaiting(t *testing.T) {
	t.Parallel()
	closed := make(chan struct{}, 1)
	conns := make(chan *Conn, 1)
	w := closeWorker((*Conn).CloseNoLinger, closed)
	w.OnConnect = func(c *Conn) {
		c.PauseRecv()
		conns <- c
	}
	r := startWorker(t, w)
	cl := r.dial(t)
	sc := acceptedConn(t, conns)
	// The request, then more than one read's worth: once it is all in the
	// server's kernel buffer, reading resumes and the close comes with most
	// of it still unread.
	junk := bytes.Repeat([]byte("x"), 4<<20)
	wrote := make(chan error, 1)
	go func() {
		_, err := cl.Write(append([]byte("req\n"), junk...))
		if err == nil {
			err = cl.(*net.TCPConn).CloseWrite()
		}
		wrote <- err
	}()
	waitFor(t, 10*time.Second, "the request and more than a read buffer in the kernel", func() bool {
		return unreadBytes(int(sc.fd)) > readBufferSize+4
	})
	sc.ResumeRecv()
	readReplyThenEOF(t, cl)
	if err := <-wrote; err != nil {
		t.Fatalf("client write: %v", err)
	}
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("OnClose did not run")
	}
}

// An idle connection's whole cost is its Conn: keep it in the 192-byte
// size class (what few connections use lives in connRare, the send queue
// exists only while something is queued).
func TestConnSize(t *testing.T) {
	if n := unsafe.Sizeof(Conn{}); n > 192 {
		t.Errorf("Conn is %d bytes, over the 192-byte size class", n)
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

// timerWorker starts a worker whose loops record the goroutine they run on.
func timerWorker(t *testing.T, count int) (*Worker, []*Loop, []uint64) {
	var started atomic.Int32
	ids := make([]uint64, count)
	var mu sync.Mutex
	w := &Worker{
		Addr:  "tcp://127.0.0.1:0",
		Count: count,
		OnWorkerStart: func(l *Loop) {
			mu.Lock()
			ids[l.Index()] = goid()
			mu.Unlock()
			started.Add(1)
		},
	}
	startWorker(t, w)
	loops := loopsOf(t, w, &started)
	mu.Lock()
	defer mu.Unlock()
	return w, loops, slices.Clone(ids)
}

func TestTimerAfterFuncRunsOnceOnLoop(t *testing.T) {
	t.Parallel()
	_, loops, ids := timerWorker(t, 2)
	if ids[0] == ids[1] || ids[0] == goid() {
		t.Fatalf("loop goroutines %v (test goroutine %d)", ids, goid())
	}
	for i, l := range loops {
		var runs atomic.Int32
		var ranOn atomic.Uint64
		fired := make(chan struct{}, 2)
		tm := l.AfterFunc(10*time.Millisecond, func() {
			runs.Add(1)
			ranOn.Store(goid())
			fired <- struct{}{}
		})
		select {
		case <-fired:
		case <-time.After(10 * time.Second):
			t.Fatalf("loop %d: AfterFunc did not fire", i)
		}
		if got := ranOn.Load(); got != ids[i] {
			t.Errorf("loop %d: AfterFunc ran on goroutine %d, want the loop's %d", i, got, ids[i])
		}
		time.Sleep(50 * time.Millisecond)
		onLoop(t, l, func() {})
		if n := runs.Load(); n != 1 {
			t.Errorf("loop %d: AfterFunc ran %d times", i, n)
		}
		if tm.Stop() {
			t.Errorf("loop %d: Stop after the timer fired reported it active", i)
		}
	}
}

func TestTimerEveryStops(t *testing.T) {
	t.Parallel()
	_, loops, ids := timerWorker(t, 1)
	l := loops[0]
	count := 0 // touched only on the loop
	wrongGoroutine := 0
	tm := l.Every(2*time.Millisecond, func() {
		count++
		if goid() != ids[0] {
			wrongGoroutine++
		}
	})
	read := func() (n int) {
		onLoop(t, l, func() { n = count })
		return n
	}
	waitFor(t, 10*time.Second, "5 runs of Every", func() bool { return read() >= 5 })
	if !tm.Stop() {
		t.Error("Stop reported the timer inactive")
	}
	if tm.Stop() {
		t.Error("second Stop reported the timer active")
	}
	stopped := read() // the removal posted by Stop has run
	time.Sleep(60 * time.Millisecond)
	if after := read(); after != stopped {
		t.Errorf("Every ran %d more times after Stop", after-stopped)
	}
	var wrong int
	onLoop(t, l, func() { wrong = wrongGoroutine })
	if wrong != 0 {
		t.Errorf("Every ran %d times off the loop goroutine", wrong)
	}

	// Stopped from its own callback after the third run.
	runs := 0
	done := make(chan struct{})
	var self *Timer
	var selfMu sync.Mutex
	selfMu.Lock()
	self = l.Every(time.Millisecond, func() {
		runs++
		if runs == 3 {
			selfMu.Lock()
			self.Stop()
			selfMu.Unlock()
			close(done)
		}
	})
	selfMu.Unlock()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("self-stopping timer did not reach 3 runs")
	}
	time.Sleep(30 * time.Millisecond)
	var n int
	onLoop(t, l, func() { n = runs })
	if n != 3 {
		t.Errorf("self-stopped timer ran %d times, want 3", n)
	}
}

func TestTimerStopBeforeFiring(t *testing.T) {
	t.Parallel()
	_, loops, _ := timerWorker(t, 1)
	l := loops[0]
	var fired atomic.Int32
	// Stopped before the loop even scheduled it.
	t1 := l.AfterFunc(20*time.Millisecond, func() { fired.Add(1) })
	if !t1.Stop() {
		t.Error("Stop of a pending AfterFunc reported it inactive")
	}
	// Stopped once it sits in the loop's heap.
	t2 := l.AfterFunc(40*time.Millisecond, func() { fired.Add(10) })
	onLoop(t, l, func() {})
	if !t2.Stop() {
		t.Error("Stop of a scheduled AfterFunc reported it inactive")
	}
	// A control timer that does fire, later than both.
	control := make(chan struct{})
	l.AfterFunc(80*time.Millisecond, func() { close(control) })
	select {
	case <-control:
	case <-time.After(10 * time.Second):
		t.Fatal("control timer did not fire")
	}
	time.Sleep(20 * time.Millisecond)
	onLoop(t, l, func() {})
	if n := fired.Load(); n != 0 {
		t.Errorf("stopped AfterFunc ran (sum %d)", n)
	}
}

func TestLoopPost(t *testing.T) {
	t.Parallel()
	w, loops, ids := timerWorker(t, 2)
	for i, l := range loops {
		var order []int // appended on the loop only
		var ranOn atomic.Uint64
		for k := 0; k < 100; k++ {
			if !l.Post(func() { order = append(order, k); ranOn.Store(goid()) }) {
				t.Fatalf("Post on a running loop reported false")
			}
		}
		var got []int
		onLoop(t, l, func() { got = slices.Clone(order) })
		if len(got) != 100 {
			t.Fatalf("loop %d: %d of 100 posted functions ran", i, len(got))
		}
		for k, v := range got {
			if v != k {
				t.Fatalf("loop %d: posted functions ran out of order: %v", i, got)
			}
		}
		if ranOn.Load() != ids[i] {
			t.Errorf("loop %d: Post ran f on goroutine %d, want %d", i, ranOn.Load(), ids[i])
		}
	}
	sctx, cancel := contextWithTimeout(10 * time.Second)
	defer cancel()
	if err := w.Shutdown(sctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	ran := false
	if loops[0].Post(func() { ran = true }) {
		t.Error("Post on a stopped loop reported true")
	}
	time.Sleep(10 * time.Millisecond)
	if ran {
		t.Error("Post ran f on a stopped loop")
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
		paused := c.bpPaused
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
	paused, readOn := c.bpPaused, c.readOn
	c.mu.Unlock()
	if !paused || readOn {
		t.Errorf("connection not paused by backpressure: bpPaused=%v readOn=%v", paused, readOn)
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

func TestPauseResumeRecv(t *testing.T) {
	t.Parallel()
	conns := make(chan *Conn, 1)
	var mu sync.Mutex
	var got []string
	w := &Worker{
		Addr:      "text://127.0.0.1:0",
		Count:     1,
		OnConnect: func(c *Conn) { conns <- c },
		OnMessage: func(c *Conn, msg []byte) {
			mu.Lock()
			got = append(got, string(msg))
			mu.Unlock()
			if string(msg) == "pause" {
				c.PauseRecv()
			}
			c.Send(msg)
		},
	}
	r := startWorker(t, w)
	cl := r.dial(t)
	c := acceptedConn(t, conns)
	messages := func() []string {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(got)
	}

	// Paused from OnMessage: the messages after it in the same read wait.
	if _, err := io.WriteString(cl, "pause\na\nb\n"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the pause message", func() bool { return len(messages()) >= 1 })
	if _, err := io.WriteString(cl, "c\n"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	onLoop(t, c.Loop(), func() {})
	if m := messages(); !slices.Equal(m, []string{"pause"}) {
		t.Errorf("OnMessage while paused: got %q, want only [pause]", m)
	}
	c.ResumeRecv()
	waitFor(t, 10*time.Second, "messages after ResumeRecv", func() bool { return len(messages()) >= 4 })
	if m := messages(); !slices.Equal(m, []string{"pause", "a", "b", "c"}) {
		t.Errorf("after ResumeRecv: got %q", m)
	}

	// Paused from another goroutine.
	c.PauseRecv()
	if _, err := io.WriteString(cl, "d\ne\n"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	onLoop(t, c.Loop(), func() {})
	if m := messages(); len(m) != 4 {
		t.Errorf("OnMessage while paused: got %q", m[4:])
	}
	c.ResumeRecv()
	waitFor(t, 10*time.Second, "messages after the second ResumeRecv", func() bool { return len(messages()) >= 6 })
	if m := messages(); !slices.Equal(m, []string{"pause", "a", "b", "c", "d", "e"}) {
		t.Errorf("after ResumeRecv: got %q", m)
	}
	br := bufio.NewReader(cl)
	for _, want := range []string{"pause", "a", "b", "c", "d", "e"} {
		line, err := br.ReadString('\n')
		if err != nil || line != want+"\n" {
			t.Fatalf("answer: got %q, %v; want %q", line, err, want)
		}
	}
}

func TestIdleTimeout(t *testing.T) {
	t.Parallel()
	const idle = 400 * time.Millisecond
	var closes atomic.Int32
	w := &Worker{
		Addr:        "text://127.0.0.1:0",
		Count:       1,
		IdleTimeout: idle,
		OnMessage:   textEcho,
		OnClose:     func(c *Conn) { closes.Add(1) },
	}
	r := startWorker(t, w)
	silent, chatty := r.dial(t), r.dial(t)
	sbr, cbr := bufio.NewReader(silent), bufio.NewReader(chatty)
	echoLine(t, silent, sbr, "hello")
	echoLine(t, chatty, cbr, "hello")

	silentClosed := make(chan error, 1)
	go func() {
		silent.SetReadDeadline(time.Now().Add(15 * time.Second))
		_, err := sbr.ReadByte()
		silentClosed <- err
	}()
	// The chatty client talks every 20ms until the silent one has been
	// closed and then for 3 more idle periods.
	var closedAt time.Time
	for i := 0; ; i++ {
		echoLine(t, chatty, cbr, "ping "+strconv.Itoa(i))
		if closedAt.IsZero() {
			select {
			case err := <-silentClosed:
				if err != io.EOF && !isReset(err) {
					t.Fatalf("silent client: got %v, want EOF", err)
				}
				silent.Close() // as a client does on EOF; the server waits for it
				closedAt = time.Now()
			default:
				if i > 1500 {
					t.Fatal("silent connection was not closed")
				}
			}
		} else if time.Since(closedAt) > 3*idle {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	echoLine(t, chatty, cbr, "still here")
	if n := closes.Load(); n != 1 {
		t.Errorf("%d connections closed, want 1", n)
	}
	if s := sumStats(w); s.active != 1 {
		t.Errorf("active = %d, want 1", s.active)
	}
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
	if testing.Short() {
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
