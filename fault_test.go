//go:build linux || darwin || freebsd

package herd

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/seed358e4494/herd/protocol"
)

// errorLog collects the errors given to OnError.
type errorLog struct {
	mu   sync.Mutex
	errs []error
}

func (e *errorLog) add(c *Conn, err error) {
	e.mu.Lock()
	e.errs = append(e.errs, err)
	e.mu.Unlock()
}

func (e *errorLog) list() []error {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]error(nil), e.errs...)
}

// waitError waits until the n-th error (counting from 1) arrives and returns it.
func (e *errorLog) wait(t testing.TB, n int) error {
	t.Helper()
	waitFor(t, 10*time.Second, fmt.Sprintf("OnError call %d", n), func() bool { return len(e.list()) >= n })
	return e.list()[n-1]
}

func frameHeader(n uint32) []byte { return binary.BigEndian.AppendUint32(nil, n) }

// frameEcho checks that a frame connection echoes msg.
func frameEcho(t testing.TB, c net.Conn, br *bufio.Reader, msg []byte) {
	t.Helper()
	if _, err := c.Write(appendFrame(nil, msg)); err != nil {
		t.Fatalf("write: %v", err)
	}
	got, err := readFrame(br)
	if err != nil {
		t.Fatalf("read echo: %v", err)
	}
	if !bytes.Equal(got, msg) {
		t.Fatalf("echo: got %d bytes %.20q, want %d bytes", len(got), got, len(msg))
	}
}

func TestFramePackageTooLarge(t *testing.T) {
	t.Parallel()
	var errs errorLog
	var closes atomic.Int32
	w := &Worker{
		Addr:           "frame://127.0.0.1:0",
		Count:          1,
		MaxPackageSize: 1024,
		OnMessage:      func(c *Conn, msg []byte) { c.Send(msg) },
		OnError:        errs.add,
		OnClose:        func(*Conn) { closes.Add(1) },
	}
	r := startWorker(t, w)

	good := r.dial(t)
	gbr := bufio.NewReader(good)
	// The largest packet allowed: 1024 bytes with its header.
	frameEcho(t, good, gbr, bytes.Repeat([]byte("m"), 1020))

	for i, size := range []uint32{1025, 2000, 1 << 30} {
		c := r.dial(t)
		msg := append(frameHeader(size), bytes.Repeat([]byte("z"), 100)...)
		if _, err := c.Write(msg); err != nil {
			t.Fatal(err)
		}
		err := errs.wait(t, i+1)
		if !errors.Is(err, ErrPackageTooLarge) {
			t.Errorf("header %d: OnError got %v, want ErrPackageTooLarge", size, err)
		}
		expectClosed(t, c, fmt.Sprintf("header %d", size))
		// The loop goes on serving: the open connection and a new one.
		frameEcho(t, good, gbr, []byte("still served "+strconv.Itoa(i)))
		c2 := r.dial(t)
		frameEcho(t, c2, bufio.NewReader(c2), []byte("new connection"))
		c2.Close()
	}
	waitFor(t, 10*time.Second, "6 closes", func() bool { return closes.Load() == 6 })
	if n := len(errs.list()); n != 3 {
		t.Errorf("OnError ran %d times, want 3: %v", n, errs.list())
	}
}

func TestTextLineTooLong(t *testing.T) {
	t.Parallel()
	var errs errorLog
	w := &Worker{
		Addr:           "text://127.0.0.1:0",
		Count:          1,
		MaxPackageSize: 1024,
		OnMessage:      textEcho,
		OnError:        errs.add,
	}
	r := startWorker(t, w)
	good := r.dial(t)
	gbr := bufio.NewReader(good)
	echoLine(t, good, gbr, strings.Repeat("k", 1023)) // 1024 with "\n"

	bad := r.dial(t)
	if _, err := bad.Write(bytes.Repeat([]byte("a"), 2048)); err != nil {
		t.Fatal(err)
	}
	if err := errs.wait(t, 1); !errors.Is(err, ErrPackageTooLarge) {
		t.Errorf("OnError got %v, want ErrPackageTooLarge", err)
	}
	expectClosed(t, bad, "line without newline")

	// Sent in small pieces, the line is refused as soon as it is too long.
	slow := r.dial(t)
	for i := 0; i < 12; i++ {
		if _, err := slow.Write(bytes.Repeat([]byte("b"), 100)); err != nil {
			if isReset(err) {
				break
			}
			t.Fatal(err)
		}
		time.Sleep(2 * time.Millisecond)
	}
	if err := errs.wait(t, 2); !errors.Is(err, ErrPackageTooLarge) {
		t.Errorf("OnError got %v, want ErrPackageTooLarge", err)
	}
	expectClosed(t, slow, "line sent in pieces")

	echoLine(t, good, gbr, "still served")
	c := r.dial(t)
	echoLine(t, c, bufio.NewReader(c), "new connection")
}

func TestFrameMalformedLength(t *testing.T) {
	t.Parallel()
	var errs errorLog
	w := &Worker{
		Addr:      "frame://127.0.0.1:0",
		Count:     1,
		OnMessage: func(c *Conn, msg []byte) { c.Send(msg) },
		OnError:   errs.add,
	}
	r := startWorker(t, w)
	for i, n := range []uint32{0, 3} {
		c := r.dial(t)
		if _, err := c.Write(append(frameHeader(n), "xyz"...)); err != nil {
			t.Fatal(err)
		}
		err := errs.wait(t, i+1)
		if !errors.Is(err, protocol.ErrFrameLength) || !strings.Contains(err.Error(), "malformed") {
			t.Errorf("length %d: OnError got %v, want a malformed-input error wrapping protocol.ErrFrameLength", n, err)
		}
		expectClosed(t, c, fmt.Sprintf("frame length %d", n))
	}
	c := r.dial(t)
	frameEcho(t, c, bufio.NewReader(c), []byte("fine"))
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

func TestHalfClose(t *testing.T) {
	t.Parallel()
	n := 20000
	if testing.Short() {
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

func countFDs(t testing.TB) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatalf("reading /proc/self/fd: %v", err)
	}
	return len(ents)
}

func TestConnectCloseNoLeaks(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("counts descriptors in /proc/self/fd")
	}
	cycles := 5000
	if testing.Short() {
		cycles = 1000
	}
	t.Run("shared", func(t *testing.T) { testConnectCloseNoLeaks(t, AcceptShared, cycles) })
	t.Run("round-robin", func(t *testing.T) { testConnectCloseNoLeaks(t, AcceptRoundRobin, cycles/5) })
}

func testConnectCloseNoLeaks(t *testing.T, mode AcceptMode, cycles int) {
	const conc = 8
	// Warm up the net package (its poller's descriptors) before counting.
	if ln, err := net.Listen("tcp", "127.0.0.1:0"); err == nil {
		if c, err := net.Dial("tcp", ln.Addr().String()); err == nil {
			c.Close()
		}
		ln.Close()
	}
	settle := func(what string, cond func() bool) {
		deadline := time.Now().Add(10 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	fdsBefore, gBefore := countFDs(t), runtime.NumGoroutine()

	w := &Worker{Addr: "text://127.0.0.1:0", Count: 2, Accept: mode, OnMessage: textEcho, Logger: quietLogger()}
	if err := w.Listen(); err != nil {
		t.Fatal(err)
	}
	addr := w.ListenAddr().String()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	runErr := make(chan error, 1)
	go func() { runErr <- w.Run(ctx) }()
	waitFor(t, 10*time.Second, "loops started", func() bool { return len(w.Stats().Loops) == 2 })
	fdsRunning, gRunning := countFDs(t), runtime.NumGoroutine()

	var next atomic.Int64
	var failures atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	for g := 0; g < conc; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= cycles {
					return
				}
				if err := connectCycle(addr, i); err != nil {
					failures.Add(1)
					firstErr.CompareAndSwap(nil, err)
				}
			}
		}()
	}
	wg.Wait()
	if n := failures.Load(); n > 0 {
		t.Fatalf("%d of %d cycles failed; first: %v", n, cycles, firstErr.Load())
	}
	waitFor(t, 20*time.Second, "every connection closed on the server", func() bool {
		s := sumStats(w)
		return s.active == 0 && s.closed == uint64(cycles)
	})
	if s := sumStats(w); s.accepted != uint64(cycles) {
		t.Errorf("accepted %d, want %d", s.accepted, cycles)
	}
	settle("fds", func() bool { return countFDs(t) <= fdsRunning && runtime.NumGoroutine() <= gRunning })
	if fds, g := countFDs(t), runtime.NumGoroutine(); fds > fdsRunning || g > gRunning {
		t.Errorf("after %d cycles: %d fds (was %d), %d goroutines (was %d)", cycles, fds, fdsRunning, g, gRunning)
	}

	cancel()
	select {
	case err := <-runErr:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Run did not return")
	}
	settle("fds", func() bool { return countFDs(t) <= fdsBefore && runtime.NumGoroutine() <= gBefore })
	if fds, g := countFDs(t), runtime.NumGoroutine(); fds > fdsBefore || g > gBefore {
		t.Errorf("after Run returned: %d fds (was %d before the worker), %d goroutines (was %d)", fds, fdsBefore, g, gBefore)
	}
	t.Logf("fds: %d before, %d running; goroutines: %d before, %d running", fdsBefore, fdsRunning, gBefore, gRunning)
}

// connectCycle is one short connection of a few kinds: echo, close at once,
// write without reading (the answer meets a closed socket).
func connectCycle(addr string, i int) error {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	switch i % 3 {
	case 0:
		msg := "cycle " + strconv.Itoa(i) + "\n"
		if _, err := io.WriteString(c, msg); err != nil {
			return err
		}
		got, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			return err
		}
		if got != msg {
			return fmt.Errorf("echo %q, want %q", got, msg)
		}
	case 1:
	case 2:
		if _, err := io.WriteString(c, "unread answer\n"); err != nil {
			return err
		}
	}
	return nil
}

func TestMaxConns(t *testing.T) {
	t.Parallel()
	for _, m := range listenModes {
		t.Run(m.name, func(t *testing.T) {
			testMaxConns(t, &Worker{Addr: "text://127.0.0.1:0", Count: 2, ReusePort: m.reusePort, Accept: m.accept})
		})
	}
}

func testMaxConns(t *testing.T, w *Worker) {
	const max = 10
	w.MaxConns, w.OnMessage = max, textEcho
	r := startWorker(t, w)
	cls := make([]net.Conn, max)
	brs := make([]*bufio.Reader, max)
	for i := range cls {
		cls[i] = r.dial(t)
		brs[i] = bufio.NewReader(cls[i])
		echoLine(t, cls[i], brs[i], "hello "+strconv.Itoa(i))
	}
	extra := r.dial(t)
	io.WriteString(extra, "over the limit\n") // may fail: the server closed it
	expectClosed(t, extra, "connection over MaxConns")
	if s := w.Stats(); s.Rejected != 1 {
		t.Errorf("Rejected = %d, want 1", s.Rejected)
	}
	for i := range cls {
		echoLine(t, cls[i], brs[i], "still here "+strconv.Itoa(i))
	}
	if s := sumStats(w); s.active != max || s.accepted != max {
		t.Errorf("active %d, accepted %d; want %d", s.active, s.accepted, max)
	}
	// A freed slot is taken again.
	cls[0].Close()
	waitFor(t, 10*time.Second, "the closed connection to be gone", func() bool { return sumStats(w).active == max-1 })
	again := r.dial(t)
	echoLine(t, again, bufio.NewReader(again), "in again")
	if s := w.Stats(); s.Rejected != 1 {
		t.Errorf("Rejected = %d, want 1", s.Rejected)
	}
}

func TestPanicInOnMessage(t *testing.T) {
	t.Parallel()
	logs := &syncBuffer{}
	var errs errorLog
	var closes atomic.Int32
	w := &Worker{
		Addr:   "text://127.0.0.1:0",
		Count:  1,
		Logger: slog.New(slog.NewTextHandler(logs, nil)),
		OnMessage: func(c *Conn, msg []byte) {
			if string(msg) == "boom" {
				panic("test panic: boom")
			}
			c.Send(msg)
		},
		OnError: errs.add,
		OnClose: func(*Conn) { closes.Add(1) },
	}
	r := startWorker(t, w)
	a, b := r.dial(t), r.dial(t)
	abr, bbr := bufio.NewReader(a), bufio.NewReader(b)
	echoLine(t, a, abr, "hi")
	echoLine(t, b, bbr, "hi")
	if _, err := io.WriteString(a, "boom\nnot answered\n"); err != nil {
		t.Fatal(err)
	}
	expectClosed(t, a, "connection whose OnMessage panicked")
	if err := errs.wait(t, 1); !errors.Is(err, ErrPanic) || !strings.Contains(err.Error(), "boom") {
		t.Errorf("OnError got %v, want ErrPanic with the panic value", err)
	}
	waitFor(t, 10*time.Second, "OnClose", func() bool { return closes.Load() == 1 })
	log := logs.String()
	if !strings.Contains(log, "panic") || !strings.Contains(log, "test panic: boom") {
		t.Errorf("the panic was not logged:\n%s", log)
	}
	echoLine(t, b, bbr, "still served")
	c := r.dial(t)
	echoLine(t, c, bufio.NewReader(c), "new connection")
	if s := sumStats(w); s.active != 2 {
		t.Errorf("active = %d, want 2", s.active)
	}
	if n := len(errs.list()); n != 1 {
		t.Errorf("OnError ran %d times: %v", n, errs.list())
	}
}

func TestPanicInOtherCallbacks(t *testing.T) {
	t.Parallel()
	logs := &syncBuffer{}
	var errs errorLog
	var connects atomic.Int32
	loops := make(chan *Loop, 1)
	w := &Worker{
		Addr:          "text://127.0.0.1:0",
		Count:         1,
		Logger:        slog.New(slog.NewTextHandler(logs, nil)),
		OnWorkerStart: func(l *Loop) { loops <- l },
		OnConnect: func(c *Conn) {
			if connects.Add(1) == 2 {
				panic("test panic in OnConnect")
			}
		},
		OnMessage: textEcho,
		OnError:   errs.add,
	}
	r := startWorker(t, w)
	l := <-loops
	a := r.dial(t)
	abr := bufio.NewReader(a)
	echoLine(t, a, abr, "first")
	b := r.dial(t)
	expectClosed(t, b, "connection whose OnConnect panicked")
	if err := errs.wait(t, 1); !errors.Is(err, ErrPanic) {
		t.Errorf("OnError got %v, want ErrPanic", err)
	}
	// A timer that panics is logged; the loop goes on.
	fired := make(chan struct{})
	l.AfterFunc(time.Millisecond, func() { close(fired); panic("test panic in a timer") })
	<-fired
	onLoop(t, l, func() {})
	echoLine(t, a, abr, "still served")
	waitFor(t, 10*time.Second, "both panics in the log", func() bool {
		log := logs.String()
		return strings.Contains(log, "test panic in OnConnect") && strings.Contains(log, "test panic in a timer")
	})
	if s := sumStats(w); s.active != 1 {
		t.Errorf("active = %d, want 1", s.active)
	}
}

func TestUnixSocket(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "h.sock")
	w := &Worker{Addr: "unix://" + path, Protocol: protocol.Text{}, Count: 2, OnMessage: textEcho}
	r := startWorker(t, w)
	if r.net != "unix" || r.addr != path {
		t.Fatalf("ListenAddr = %s %s, want unix %s", r.net, r.addr, path)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode()&os.ModeSocket == 0 {
		t.Fatalf("socket file: %v, %v", fi, err)
	}
	for i := 0; i < 4; i++ {
		c := r.dial(t)
		echoLine(t, c, bufio.NewReader(c), "over unix "+strconv.Itoa(i))
		c.Close()
	}
	waitFor(t, 10*time.Second, "connections closed", func() bool { return sumStats(w).active == 0 })
	r.cancel()
	if err := r.wait(t); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Errorf("socket file still there after stop: %v", err)
	}
}

func TestIPv6(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp6", "[::1]:0")
	if err != nil {
		t.Skipf("::1 unavailable: %v", err)
	}
	ln.Close()
	remote := make(chan net.Addr, 1)
	w := &Worker{
		Addr:      "tcp://[::1]:0",
		Protocol:  protocol.Text{},
		Count:     1,
		OnConnect: func(c *Conn) { remote <- c.RemoteAddr() },
		OnMessage: textEcho,
	}
	r := startWorker(t, w)
	if ta, ok := w.ListenAddr().(*net.TCPAddr); !ok || !ta.IP.Equal(net.IPv6loopback) || ta.Port == 0 {
		t.Fatalf("ListenAddr = %v", w.ListenAddr())
	}
	c := r.dial(t)
	echoLine(t, c, bufio.NewReader(c), "over ipv6")
	if ra, ok := (<-remote).(*net.TCPAddr); !ok || !ra.IP.Equal(net.IPv6loopback) {
		t.Errorf("RemoteAddr = %v, want ::1", ra)
	}
}

func TestAddressErrors(t *testing.T) {
	t.Parallel()
	cases := []struct {
		w    *Worker
		want string
	}{
		{&Worker{Addr: "udp://127.0.0.1:0"}, "unknown scheme"},
		{&Worker{Addr: "text://127.0.0.1:0", Protocol: protocol.Frame{}}, "Protocol"},
		{&Worker{Addr: "frame://127.0.0.1:0", Protocol: protocol.Text{}}, "Protocol"},
		{&Worker{Addr: "unix://"}, "unix"},
		{&Worker{Addr: "tcp://127.0.0.1:notaport"}, "127.0.0.1:notaport"},
		{&Worker{Addr: "tcp://127.0.0.1:0", Count: -1}, "negative"},
	}
	for _, tc := range cases {
		tc.w.Logger = quietLogger()
		err := tc.w.Listen()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Listen(%q): got %v, want an error mentioning %q", tc.w.Addr, err, tc.want)
		}
		if tc.w.ListenAddr() != nil {
			t.Errorf("%q: ListenAddr = %v after a failed Listen", tc.w.Addr, tc.w.ListenAddr())
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err2 := tc.w.Run(ctx)
		cancel()
		if err2 == nil || !strings.Contains(err2.Error(), tc.want) {
			t.Errorf("Run(%q): got %v, want an error mentioning %q", tc.w.Addr, err2, tc.want)
		}
	}
	// The address in use: a second worker on the same port fails to bind.
	w := &Worker{Addr: "tcp://127.0.0.1:0", Count: 1}
	r := startWorker(t, w)
	w2 := &Worker{Addr: "tcp://" + r.addr, Count: 1, Logger: quietLogger()}
	if err := w2.Listen(); err == nil {
		w2.Shutdown(context.Background())
		t.Errorf("second Listen on %s succeeded", r.addr)
	}
}

func TestRunTwice(t *testing.T) {
	t.Parallel()
	w := &Worker{Addr: "text://127.0.0.1:0", Count: 1, OnMessage: textEcho}
	r := startWorker(t, w)
	c := r.dial(t)
	echoLine(t, c, bufio.NewReader(c), "running")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := w.Run(ctx); !errors.Is(err, ErrRunning) {
		t.Errorf("second Run: got %v, want ErrRunning", err)
	}
	echoLine(t, c, bufio.NewReader(c), "still running")
	c.Close()
	r.cancel()
	if err := r.wait(t); err != nil {
		t.Fatalf("first Run: %v", err)
	}
	if err := w.Run(ctx); !errors.Is(err, ErrWorkerClosed) {
		t.Errorf("Run after stop: got %v, want ErrWorkerClosed", err)
	}
	if err := w.Listen(); !errors.Is(err, ErrWorkerClosed) {
		t.Errorf("Listen after stop: got %v, want ErrWorkerClosed", err)
	}
}

func TestRunAfterShutdown(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	// Shut down while running.
	w := &Worker{Addr: "text://127.0.0.1:0", Count: 1, OnMessage: textEcho}
	r := startWorker(t, w)
	c := r.dial(t)
	echoLine(t, c, bufio.NewReader(c), "up")
	c.Close()
	if err := w.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if err := r.wait(t); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if err := w.Run(ctx); !errors.Is(err, ErrWorkerClosed) {
		t.Errorf("Run after Shutdown: got %v, want ErrWorkerClosed", err)
	}
	if err := w.Shutdown(ctx); err != nil {
		t.Errorf("second Shutdown: %v", err)
	}
	if _, err := net.DialTimeout("tcp", r.addr, time.Second); err == nil {
		t.Errorf("dial after Shutdown succeeded")
	}

	// Shut down after Listen, before Run: the port is released.
	w2 := &Worker{Addr: "text://127.0.0.1:0", Count: 1, Logger: quietLogger()}
	if err := w2.Listen(); err != nil {
		t.Fatal(err)
	}
	addr := w2.ListenAddr().String()
	if err := w2.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown before Run: %v", err)
	}
	if err := w2.Run(ctx); !errors.Is(err, ErrWorkerClosed) {
		t.Errorf("Run after Shutdown: got %v, want ErrWorkerClosed", err)
	}
	if _, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		t.Errorf("dial after Shutdown succeeded")
	}

	// Shut down before Listen.
	w3 := &Worker{Addr: "text://127.0.0.1:0", Count: 1, Logger: quietLogger()}
	if err := w3.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown of a new worker: %v", err)
	}
	if err := w3.Run(ctx); !errors.Is(err, ErrWorkerClosed) {
		t.Errorf("Run after Shutdown of a new worker: got %v, want ErrWorkerClosed", err)
	}
}
