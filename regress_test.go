//go:build linux || darwin || freebsd

package herd

// Regression tests for the review findings fixed in 27c0607, one per
// finding; each of them failed before that commit. The two tests skipped
// with "BUG:" show what the fix left open.

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/seed358e4494/herd/protocol"
)

// regressPayload is n bytes whose value depends on their offset, so that a
// lost, repeated or reordered stretch does not compare equal.
func regressPayload(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i%251) ^ byte(i>>16)
	}
	return b
}

// readPayloadThenEOF reads want from c in small reads (slowly: a pause every
// 256 KiB) and then expects a clean end of stream.
func readPayloadThenEOF(c net.Conn, want []byte) error {
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	got := 0
	buf := make([]byte, 16<<10)
	for got < len(want) {
		n, err := c.Read(buf[:min(len(buf), len(want)-got)])
		if n > 0 {
			if !bytes.Equal(buf[:n], want[got:got+n]) {
				return fmt.Errorf("bytes %d..%d differ from what the server sent", got, got+n)
			}
			got += n
			if got%(256<<10) < n {
				time.Sleep(time.Millisecond)
			}
		}
		if err != nil {
			return fmt.Errorf("after %d of %d bytes: %w", got, len(want), err)
		}
	}
	n, err := c.Read(buf)
	if n > 0 || err != io.EOF {
		return fmt.Errorf("after all %d bytes: got %d more bytes, err %v; want EOF", got, n, err)
	}
	return nil
}

// Finding 1: Close closed the socket as soon as the queue was written to the
// kernel. Input the peer had sent meanwhile (unread, as a closing connection
// reads nothing) made the kernel answer with a reset, which discarded what
// was still in the socket's send buffer: the client lost the end of the
// reply and got "connection reset by peer". Close now lingers.
func TestRegressCloseKeepsReplyTail(t *testing.T) {
	t.Parallel()
	const size = 4 << 20
	const clients = 4
	payload := regressPayload(size)
	w := &Worker{
		Addr:              "text://127.0.0.1:0",
		Count:             2,
		MaxSendBufferSize: -1,
		// Close lingers at most StopTimeout from the moment its queue is
		// in the kernel, even if the client is still reading (see
		// TestRegressCloseLingerSlowReader): leave a slow -race run time.
		StopTimeout: 15 * time.Second,
		OnMessage: func(c *Conn, msg []byte) {
			if string(msg) != "req" {
				return
			}
			if res := c.SendRaw(payload); res == Dropped {
				t.Errorf("SendRaw of the reply: %v", res)
			}
			c.Close()
		},
	}
	r := startWorker(t, w)
	errs := make(chan error, clients)
	for i := 0; i < clients; i++ {
		cl := r.dialSmallBufs(t, 16<<10)
		go func() {
			if _, err := io.WriteString(cl, "req\n"); err != nil {
				errs <- fmt.Errorf("write req: %w", err)
				return
			}
			time.Sleep(20 * time.Millisecond)
			// The server is closing: this is never read by the application.
			if _, err := io.WriteString(cl, "more\n"); err != nil {
				errs <- fmt.Errorf("write more: %w", err)
				return
			}
			err := readPayloadThenEOF(cl, payload)
			cl.Close()
			errs <- err
		}()
	}
	for i := 0; i < clients; i++ {
		select {
		case err := <-errs:
			if err != nil {
				t.Errorf("client: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Fatal("clients did not finish within 30s")
		}
	}
	waitFor(t, 10*time.Second, "connections closed", func() bool {
		s := sumStats(w)
		return s.active == 0 && s.queued == 0
	})
}

// Finding 2: a Listen that failed on a unix socket path removed the path,
// even though it belonged to another live server; and a stale socket file
// (nobody listening) made Listen fail instead of being replaced.
func TestRegressUnixSocketFiles(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()

	t.Run("live", func(t *testing.T) {
		p := filepath.Join(dir, "live.sock")
		ln, err := net.Listen("unix", p)
		if err != nil {
			t.Skipf("unix sockets unavailable: %v", err)
		}
		defer ln.Close()
		w := &Worker{Addr: "unix://" + p, Count: 1, Logger: quietLogger()}
		if err := w.Listen(); err == nil {
			w.Shutdown(context.Background())
			t.Fatalf("Listen on %s succeeded while another server listens on it", p)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := w.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown after a failed Listen: %v", err)
		}
		if fi, err := os.Lstat(p); err != nil || fi.Mode()&os.ModeSocket == 0 {
			t.Fatalf("the live server's socket file is gone after a failed Listen: %v", err)
		}
		accepted := make(chan error, 1)
		go func() {
			c, err := ln.Accept()
			if err == nil {
				c.Close()
			}
			accepted <- err
		}()
		c, err := net.DialTimeout("unix", p, 5*time.Second)
		if err != nil {
			t.Fatalf("dial the live server: %v", err)
		}
		c.Close()
		select {
		case err := <-accepted:
			if err != nil {
				t.Fatalf("the live server's Accept: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("the live server accepted nothing")
		}
	})

	t.Run("stale", func(t *testing.T) {
		p := filepath.Join(dir, "stale.sock")
		ul, err := net.ListenUnix("unix", &net.UnixAddr{Name: p, Net: "unix"})
		if err != nil {
			t.Skipf("unix sockets unavailable: %v", err)
		}
		ul.SetUnlinkOnClose(false)
		ul.Close() // as a process that died would leave it
		if _, err := os.Lstat(p); err != nil {
			t.Fatalf("stale socket file: %v", err)
		}
		w := &Worker{Addr: "unix://" + p, Protocol: protocol.Text{}, Count: 1, OnMessage: textEcho}
		r := startWorker(t, w) // fails if the stale file is not replaced
		c := r.dial(t)
		echoLine(t, c, bufio.NewReader(c), "over a replaced socket file")
		c.Close()
		r.cancel()
		if err := r.wait(t); err != nil {
			t.Fatalf("Run: %v", err)
		}
		if _, err := os.Lstat(p); !os.IsNotExist(err) {
			t.Errorf("the worker's own socket file is still there after it stopped: %v", err)
		}
	})
}

// Finding 3: a second Shutdown on a worker that never ran closed a nil
// channel and panicked.
func TestRegressShutdownTwiceNeverRan(t *testing.T) {
	t.Parallel()
	shutdownTwice := func(t *testing.T, w *Worker) {
		t.Helper()
		for i := 1; i <= 2; i++ {
			err, panicked := func() (err error, p any) {
				defer func() { p = recover() }()
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				return w.Shutdown(ctx), nil
			}()
			if panicked != nil {
				t.Fatalf("Shutdown %d panicked: %v", i, panicked)
			}
			if err != nil {
				t.Errorf("Shutdown %d: %v", i, err)
			}
		}
	}
	t.Run("new", func(t *testing.T) {
		shutdownTwice(t, &Worker{Addr: "tcp://127.0.0.1:0", Logger: quietLogger()})
	})
	t.Run("listened", func(t *testing.T) {
		w := &Worker{Addr: "tcp://127.0.0.1:0", Count: 1, Logger: quietLogger()}
		if err := w.Listen(); err != nil {
			t.Fatal(err)
		}
		shutdownTwice(t, w)
	})
	for _, addr := range []string{"udp://127.0.0.1:0", "tcp://127.0.0.1:notaport"} {
		t.Run("run failed "+addr, func(t *testing.T) {
			w := &Worker{Addr: addr, Count: 1, Logger: quietLogger()}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := w.Run(ctx); err == nil {
				t.Fatalf("Run(%q) succeeded", addr)
			}
			shutdownTwice(t, w)
			if err := w.Run(ctx); !errors.Is(err, ErrWorkerClosed) {
				t.Errorf("Run after Shutdown: got %v, want ErrWorkerClosed", err)
			}
		})
	}
}

// Finding 4: the idle sweep only looked at open connections, so one stuck
// closing (its queue never written because the peer reads nothing) stayed
// forever, with its queue. Close now also bounds it by itself: a queue that
// does not shrink for StopTimeout is dropped.
func TestRegressIdleTimeoutAbortsStuckClose(t *testing.T) {
	t.Parallel()
	// Either bound cuts a close stuck behind a peer that reads nothing:
	// IdleTimeout, or (with none) Close's own StopTimeout.
	for _, tc := range []struct {
		name        string
		idle, grace time.Duration
	}{
		{"IdleTimeout", 200 * time.Millisecond, 0},
		{"StopTimeout", 0, 300 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			regressStuckClose(t, tc.idle, tc.grace)
		})
	}
}

func regressStuckClose(t *testing.T, idle, grace time.Duration) {
	const size = 4 << 20
	payload := regressPayload(size)
	conns := make(chan *Conn, 1)
	results := make(chan SendResult, 1)
	var closes atomic.Int32
	w := &Worker{
		Addr:              "tcp://127.0.0.1:0",
		Count:             1,
		IdleTimeout:       idle,
		StopTimeout:       grace,
		MaxSendBufferSize: -1,
		OnConnect: func(c *Conn) {
			// Sent and closed in the loop turn that accepts the
			// connection: the idle sweep cannot have closed it before.
			results <- c.Send(payload)
			c.Close()
			conns <- c
		},
		OnClose: func(c *Conn) { closes.Add(1) },
	}
	r := startWorker(t, w)
	_ = r.dialSmallBufs(t, 16<<10) // never reads, never closes
	c := acceptedConn(t, conns)
	if res := <-results; res != Queued {
		t.Fatalf("Send of %d bytes to a client that does not read: %v, want Queued", size, res)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		s := sumStats(w)
		if closes.Load() == 1 && s.active == 0 && s.queued == 0 && c.SendQueueBytes() == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("connection stuck closing 10s after Close (IdleTimeout %v, StopTimeout %v): OnClose ran %d times, active %d, queued %d bytes",
				w.IdleTimeout, w.StopTimeout, closes.Load(), s.active, s.queued)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Finding 5: during a graceful stop the listening socket stayed open until
// Run returned. The kernel kept completing handshakes that no loop would
// ever accept: a client connected and then hung. The listener now closes as
// soon as draining starts, so new connections are refused.
func TestRegressDrainRefusesNewConns(t *testing.T) {
	t.Parallel()
	for _, m := range listenModes {
		t.Run(m.name, func(t *testing.T) {
			t.Parallel()
			w := &Worker{
				Addr:        "text://127.0.0.1:0",
				Count:       2,
				Accept:      m.accept,
				ReusePort:   m.reusePort,
				StopTimeout: 10 * time.Second, // the held connection outlives the test's checks
				OnMessage:   textEcho,
			}
			r := startWorker(t, w)
			held := r.dial(t)
			hbr := bufio.NewReader(held)
			echoLine(t, held, hbr, "hold the drain open")

			ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			defer cancel()
			shut := make(chan error, 1)
			go func() { shut <- w.Shutdown(ctx) }()

			// Wait (bounded) until the listener is gone.
			deadline := time.Now().Add(3 * time.Second)
			var err error
			for {
				var c net.Conn
				c, err = net.DialTimeout("tcp", r.addr, time.Second)
				if err == nil {
					c.Close()
				} else if errors.Is(err, syscall.ECONNREFUSED) {
					break
				}
				// Else a handshake caught by the listener's closing
				// (reset): try again.
				if time.Now().After(deadline) {
					break
				}
				time.Sleep(5 * time.Millisecond)
			}
			if err == nil {
				t.Errorf("%s: connections to %s are still accepted by the kernel 3s into a graceful stop", m.name, r.addr)
			} else if !errors.Is(err, syscall.ECONNREFUSED) {
				t.Errorf("%s: dial during the drain: %v, want connection refused", m.name, err)
			}
			if c, err := net.DialTimeout("tcp", r.addr, time.Second); err == nil {
				c.Close()
				t.Errorf("%s: a new connection during the drain was accepted", m.name)
			} else if !errors.Is(err, syscall.ECONNREFUSED) {
				t.Errorf("%s: dial during the drain: %v, want connection refused", m.name, err)
			}
			select {
			case err := <-shut:
				t.Fatalf("Shutdown returned (%v) while a connection held the drain", err)
			default:
			}

			// The held connection is answered with the end of the stream;
			// closing our side ends the drain.
			held.SetReadDeadline(time.Now().Add(10 * time.Second))
			if b, err := hbr.ReadByte(); err != io.EOF {
				t.Errorf("held connection: got %q, %v; want EOF", b, err)
			}
			held.Close()
			select {
			case err := <-shut:
				if err != nil {
					t.Errorf("Shutdown: %v", err)
				}
			case <-time.After(15 * time.Second):
				t.Fatal("Shutdown did not return after the held connection closed")
			}
			if err := r.wait(t); err != nil {
				t.Errorf("Run: %v", err)
			}
		})
	}
}

// Finding 6 (as finding 1, from a goroutine): Close while the peer keeps
// pipelining requests. Before the fix the unread requests made the kernel
// reset the connection, and the client lost the queued messages.
func TestRegressCloseFromGoroutineWhilePeerSends(t *testing.T) {
	t.Parallel()
	const n = 25000 // 200 bytes each: 5 MB, more than a socket buffer holds
	msg := func(i int) string { return fmt.Sprintf("%06d %0193d", i, i) }
	var pings atomic.Int32
	dropped := make(chan int, 1) // the first Send that was dropped, if any
	w := &Worker{
		Addr:              "text://127.0.0.1:0",
		Count:             1,
		MaxSendBufferSize: -1,
		StopTimeout:       15 * time.Second, // as in TestRegressCloseKeepsReplyTail
		OnMessage: func(c *Conn, m []byte) {
			if string(m) != "go" {
				pings.Add(1)
				return
			}
			go func() {
				for i := 0; i < n; i++ {
					if c.Send([]byte(msg(i))) == Dropped {
						dropped <- i
						return
					}
				}
				c.Close()
			}()
		},
	}
	r := startWorker(t, w)
	cl := r.dialSmallBufs(t, 16<<10)
	if _, err := io.WriteString(cl, "go\n"); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // the pipelining client keeps sending
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := io.WriteString(cl, "ping "+strconv.Itoa(i)+"\n"); err != nil {
				return
			}
			time.Sleep(time.Millisecond)
		}
	}()
	defer func() { close(stop); wg.Wait() }()

	// Read late and slowly, so that Close comes while much is queued and
	// pings arrive while the connection is closing.
	time.Sleep(50 * time.Millisecond)
	cl.SetReadDeadline(time.Now().Add(20 * time.Second))
	br := bufio.NewReaderSize(cl, 4096)
	for i := 0; i < n; i++ {
		if i%1000 == 999 {
			time.Sleep(time.Millisecond)
		}
		line, err := br.ReadString('\n')
		if err != nil || line != msg(i)+"\n" {
			select {
			case d := <-dropped:
				t.Fatalf("Send %d before Close was dropped", d)
			default:
			}
		}
		if err != nil {
			t.Fatalf("message %d of %d: %v (the server had read %d pings)", i, n, err, pings.Load())
		}
		if want := msg(i) + "\n"; line != want {
			t.Fatalf("message %d: got %.20q, want %.20q", i, line, want)
		}
	}
	if b, err := br.ReadByte(); err != io.EOF {
		t.Fatalf("after %d messages: got %q, %v; want EOF", n, b, err)
	}
}

// When Close's queue has gone into the kernel, the kernel may still hold
// megabytes for the peer (the send buffer grows to tcp_wmem's maximum, 4 MiB
// by default). A peer still reading them, slowly but steadily, and still
// sending, must get the whole reply: the linger lasts while the kernel's
// unsent bytes keep going down, not a fixed StopTimeout.
func TestRegressCloseLingerSlowReader(t *testing.T) {
	t.Parallel()
	const size = 2 << 20
	payload := regressPayload(size)
	w := &Worker{
		Addr:              "text://127.0.0.1:0",
		Count:             1,
		MaxSendBufferSize: -1,
		StopTimeout:       200 * time.Millisecond,
		OnMessage: func(c *Conn, msg []byte) {
			if string(msg) == "req" {
				c.SendRaw(payload)
				c.Close()
			}
		},
	}
	r := startWorker(t, w)
	cl := r.dialSmallBufs(t, 16<<10)
	if _, err := io.WriteString(cl, "req\n"); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // the client keeps sending while it reads
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
			if _, err := io.WriteString(cl, "ping\n"); err != nil {
				return
			}
		}
	}()
	defer func() { close(stop); wg.Wait() }()
	// About 3 MB/s: the reply takes well over StopTimeout to read, and the
	// client reads all the time.
	cl.SetReadDeadline(time.Now().Add(20 * time.Second))
	got := 0
	buf := make([]byte, 16<<10)
	for got < size {
		n, err := cl.Read(buf[:min(len(buf), size-got)])
		if n > 0 && !bytes.Equal(buf[:n], payload[got:got+n]) {
			t.Fatalf("bytes %d..%d differ from what the server sent", got, got+n)
		}
		got += n
		if err != nil {
			t.Fatalf("after %d of %d bytes: %v", got, size, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if n, err := cl.Read(buf); n > 0 || err != io.EOF {
		t.Fatalf("after all %d bytes: %d more bytes, %v; want EOF", size, n, err)
	}
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

// Finding 7: every message dropped on a full queue posted its own task and
// OnError call. They are now coalesced: each report names how many messages
// it covers, and Stats still counts every drop.
func TestRegressDropReportsCoalesced(t *testing.T) {
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
