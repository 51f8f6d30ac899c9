//go:build linux || darwin || freebsd

package herd

// Closing: Close and its linger, CloseNoWait, the peer's end of stream
// (half-close), IdleTimeout, held connections.

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/seed358e4494/herd/internal/soak"
	"github.com/seed358e4494/herd/internal/sock"
	"github.com/seed358e4494/herd/protocol"
)

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

// CloseNoWait closes as soon as the reply is written, while the client,
// having read the reply and the end of stream, keeps its side open; Close
// waits for the client's side.
func TestCloseNoWait(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		closeFn func(*Conn)
		lingers bool
	}{
		{"CloseNoWait", (*Conn).CloseNoWait, false},
		// In a later loop turn than the read: the kernel is asked
		// whether input waits.
		{"CloseNoWait later", func(c *Conn) {
			go func() {
				time.Sleep(20 * time.Millisecond)
				c.CloseNoWait()
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

// CloseNoWait with input still unread in the kernel lingers after all:
// closing then would reset the connection.
func TestCloseNoWaitWithInputWaiting(t *testing.T) {
	t.Parallel()
	closed := make(chan struct{}, 1)
	conns := make(chan *Conn, 1)
	w := closeWorker((*Conn).CloseNoWait, closed)
	w.OnConnect = func(c *Conn) {
		c.PauseRecv()
		// A fixed 1 MiB buffer: the kernel's own starts near one read's
		// worth and grows only as the program reads, which a paused
		// connection does not (on a loaded CI machine the condition below
		// was not met in 10 s).
		unix.SetsockoptInt(int(c.fd), unix.SOL_SOCKET, unix.SO_RCVBUF, 1<<20)
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
		return sock.UnreadBytes(int(sc.fd)) > readBufferSize+4
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

func TestIdleTimeout(t *testing.T) {
	t.Parallel()
	// The chatty client talks every 20ms: a stall of its goroutine under a
	// loaded CI's -race run (one of over a second was seen) passes.
	const idle = 2 * time.Second
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
	// closed and then for 3 more idle periods (1 without HERD_SOAK).
	after := time.Duration(1)
	if soak.Enabled() {
		after = 3
	}
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
		} else if time.Since(closedAt) > after*idle {
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

// Owed-bytes finding 12: IdleTimeout closed a connection whose reply was
// being made on another goroutine (Hold), and the reply was dropped.
func TestIdleTimeoutSparesHeld(t *testing.T) {
	t.Parallel()
	const idle = 100 * time.Millisecond
	w := &Worker{Addr: "text://127.0.0.1:0", Count: 1, IdleTimeout: idle}
	w.OnMessage = func(c *Conn, msg []byte) {
		m := string(msg)
		hold := c.Hold()
		go func() {
			defer hold.Release()
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

// Owed-bytes finding 5 (core part): a peer that half-closes right after its
// request is answered when the reply comes from another goroutine under
// Hold.
func TestHalfCloseAnsweredWhileHeld(t *testing.T) {
	t.Parallel()
	w := &Worker{Addr: "text://127.0.0.1:0", Count: 1}
	w.OnMessage = func(c *Conn, msg []byte) {
		m := string(msg)
		hold := c.Hold()
		go func() {
			defer hold.Release()
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

func TestHalfClose(t *testing.T) {
	t.Parallel()
	n := 20000
	if !soak.Enabled() {
		n = 2000
	}
	w := &Worker{Addr: "text://127.0.0.1:0", Count: 1, OnMessage: textEcho}
	r := startWorker(t, w)
	cl := r.dial(t)
	var b bytes.Buffer
	for i := 0; i < n; i++ {
		fmt.Fprintf(&b, "line %d\n", i)
	}
	readDone := make(chan error, 1)
	go func() {
		br := bufio.NewReader(cl)
		for i := 0; i < n; i++ {
			line, err := br.ReadString('\n')
			if err != nil {
				readDone <- fmt.Errorf("answer %d: %v", i, err)
				return
			}
			if want := fmt.Sprintf("line %d\n", i); line != want {
				readDone <- fmt.Errorf("answer %d: got %q, want %q", i, line, want)
				return
			}
		}
		if rest, err := io.ReadAll(br); err != nil || len(rest) > 0 {
			readDone <- fmt.Errorf("after %d answers: %q, %v; want EOF", n, rest, err)
			return
		}
		readDone <- nil
	}()
	if _, err := cl.Write(b.Bytes()); err != nil {
		t.Fatal(err)
	}
	if err := cl.(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if err := <-readDone; err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the server to close", func() bool { return sumStats(w).active == 0 })
	if s := sumStats(w); s.messages != uint64(n) || s.dropped != 0 {
		t.Errorf("messages %d (want %d), dropped %d", s.messages, n, s.dropped)
	}
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

// Regression: Close closed the socket as soon as the queue was written to
// the kernel. Input the peer had sent meanwhile (unread, as a closing
// connection reads nothing) made the kernel answer with a reset, which
// discarded what was still in the socket's send buffer: the client lost the
// end of the reply and got "connection reset by peer". Close now lingers.
func TestCloseKeepsReplyTail(t *testing.T) {
	t.Parallel()
	const size = 4 << 20
	const clients = 4
	payload := offsetPayload(size)
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

// Regression: the idle sweep only looked at open connections, so one stuck
// closing (its queue never written because the peer reads nothing) stayed
// forever, with its queue. Close now also bounds it by itself: a queue that
// does not shrink for StopTimeout is dropped.
func TestIdleTimeoutAbortsStuckClose(t *testing.T) {
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
			stuckClose(t, tc.idle, tc.grace)
		})
	}
}

func stuckClose(t *testing.T, idle, grace time.Duration) {
	const size = 4 << 20
	payload := offsetPayload(size)
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

// Regression: Close while the peer keeps pipelining requests. Before the fix
// the unread requests made the kernel reset the connection, and the client
// lost the queued messages.
func TestCloseFromGoroutineWhilePeerSends(t *testing.T) {
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
func TestCloseLingerSlowReader(t *testing.T) {
	t.Parallel()
	// 4 MiB: more than the kernel's send buffer takes, so that the send
	// queue is still being written when the linger is looked at. A reader
	// frees a megabytes-deep socket buffer slowly: the queue may not move
	// for longer than LingerTimeout while the kernel's does, and the
	// connection was reset (the client saw EOF, its writer having taken
	// the reset) after about 600 KB.
	const size = 4 << 20
	payload := offsetPayload(size)
	w := &Worker{
		Addr:              "text://127.0.0.1:0",
		Count:             1,
		MaxSendBufferSize: -1,
		LingerTimeout:     500 * time.Millisecond, // more than a loaded machine starves the reader for
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
	// About 1.6 MB/s: the reply takes well over LingerTimeout to read
	// (2.6 s), and the client reads all the time.
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
		time.Sleep(10 * time.Millisecond)
	}
	if n, err := cl.Read(buf); n > 0 || err != io.EOF {
		t.Fatalf("after all %d bytes: %d more bytes, %v; want EOF", size, n, err)
	}
}

// A connection whose reading is paused still notices that its peer reset
// it: the poller reports the failure even for a socket it watches for
// nothing, and the connection closes instead of the loop spinning on it.
func TestPausedConnNoticesReset(t *testing.T) {
	t.Parallel()
	conns := make(chan *Conn, 1)
	closed := make(chan struct{})
	w := &Worker{Addr: "tcp://127.0.0.1:0", Count: 1,
		OnConnect: func(c *Conn) { c.PauseRecv(); conns <- c },
		OnClose:   func(c *Conn) { close(closed) }}
	r := startWorker(t, w)
	cl := r.dial(t)
	acceptedConn(t, conns)
	cl.Write([]byte("unread"))
	cl.(*net.TCPConn).SetLinger(0)
	cl.Close() // a reset
	before := w.Stats().Loops[0].Wakeups
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Fatalf("a paused connection reset by its peer is still open; the loop woke %d times meanwhile", w.Stats().Loops[0].Wakeups-before)
	}
}

// A peer that closes both ways (a Unix socket's close) while its reply is
// still being made under Hold is gone: the connection closes at once, and
// the late reply learns it (ErrConnClosed), instead of the loop being
// woken for the hang-up until the Release.
func TestHeldConnPeerGone(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "s")
	closed := make(chan struct{})
	replied := make(chan error, 1)
	w := &Worker{Addr: "unix://" + path, Count: 1, Protocol: protocol.Text{},
		OnClose: func(c *Conn) { close(closed) }}
	w.OnMessage = func(c *Conn, msg []byte) {
		hold := c.Hold()
		go func() {
			defer hold.Release()
			<-closed
			_, err := c.Write([]byte("late\n"))
			replied <- err
		}()
	}
	r := startWorker(t, w)
	cl := r.dial(t)
	io.WriteString(cl, "q\n")
	time.Sleep(50 * time.Millisecond) // delivered, held
	before := w.Stats().Loops[0].Wakeups
	cl.Close()
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Fatalf("held connection whose peer is gone still open; the loop woke %d times", w.Stats().Loops[0].Wakeups-before)
	}
	if err := <-replied; !errors.Is(err, ErrConnClosed) {
		t.Errorf("late reply: %v, want ErrConnClosed", err)
	}
}

// A held connection whose reply is queued but whose peer takes nothing of
// it is not spared by IdleTimeout: it is aborted, and the producer waiting
// for the peer learns it (ErrConnClosed) instead of waiting for ever.
func TestIdleTimeoutAbortsStalledHeld(t *testing.T) {
	t.Parallel()
	result := make(chan error, 1)
	w := &Worker{Addr: "tcp://127.0.0.1:0", Count: 1, IdleTimeout: 200 * time.Millisecond}
	w.OnConnect = func(c *Conn) {
		hold := c.Hold()
		go func() {
			defer hold.Release()
			chunk := make([]byte, 64<<10)
			for {
				if err := c.WaitWritable(context.Background()); err != nil {
					result <- err
					return
				}
				c.Write(chunk)
			}
		}()
	}
	r := startWorker(t, w)
	r.dialSmallBufs(t, 4096) // reads nothing
	select {
	case err := <-result:
		if !errors.Is(err, ErrConnClosed) {
			t.Errorf("producer: %v, want ErrConnClosed", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a held connection whose peer reads nothing was never ended")
	}
}

// TestLingerTimeout: a connection closed with its reply written waits for
// its peer's end for LingerTimeout, apart from StopTimeout: here a peer
// that never closes holds it about 300 ms, not the 30 s of StopTimeout.
func TestLingerTimeout(t *testing.T) {
	t.Parallel()
	const linger = 300 * time.Millisecond
	closed := make(chan time.Time, 1)
	w := &Worker{
		Addr:          "tcp://127.0.0.1:0",
		Count:         1,
		StopTimeout:   30 * time.Second,
		LingerTimeout: linger,
		OnConnect: func(c *Conn) {
			c.Send([]byte("bye"))
			c.Close()
		},
		OnClose: func(*Conn) { closed <- time.Now() },
	}
	r := startWorker(t, w)
	dialed := time.Now() // the linger begins after this
	cl := r.dial(t)      // reads, and never closes its side
	cl.SetReadDeadline(time.Now().Add(5 * time.Second))
	got, err := io.ReadAll(cl)
	if err != nil || string(got) != "bye" {
		t.Fatalf("read %q, %v; want the reply and the end of stream", got, err)
	}
	select {
	case at := <-closed:
		if held := at.Sub(dialed); held < linger*3/4 {
			t.Fatalf("closed %v after the dial: it did not wait for the peer", held)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("still lingering 5 s after its end of stream; LingerTimeout is %v", linger)
	}
}
