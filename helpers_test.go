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
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// goid returns the id of the calling goroutine, read from the first line of
// its stack trace ("goroutine 18 [running]:").
func goid() uint64 {
	var buf [64]byte
	b := buf[:runtime.Stack(buf[:], false)]
	b = bytes.TrimPrefix(b, []byte("goroutine "))
	if i := bytes.IndexByte(b, ' '); i > 0 {
		b = b[:i]
	}
	n, err := strconv.ParseUint(string(b), 10, 64)
	if err != nil {
		panic("goid: cannot parse " + string(buf[:]))
	}
	return n
}

// syncBuffer is a bytes.Buffer safe for the concurrent writes of a Logger
// used by several loops.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// quietLogger drops everything below Error, so tests do not flood the
// output; failures still show up.
func quietLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelError}))
}

// running is a worker started by startWorker.
type running struct {
	w      *Worker
	addr   string // for net.Dial
	net    string // "tcp" or "unix"
	cancel context.CancelFunc
	done   chan error // receives Run's result once
	result error
	ended  bool
}

// startWorker binds w, runs it on a goroutine, and registers a cleanup that
// stops it (gracefully, then forcibly) and waits for Run to return. Register
// client cleanups after calling it so that they run first.
func startWorker(t testing.TB, w *Worker) *running {
	t.Helper()
	if w.Logger == nil {
		w.Logger = quietLogger()
	}
	if err := w.Listen(); err != nil {
		t.Fatalf("Listen(%q): %v", w.Addr, err)
	}
	a := w.ListenAddr()
	if a == nil {
		t.Fatalf("ListenAddr is nil after Listen")
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{w: w, addr: a.String(), net: a.Network(), cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- w.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if r.ended {
			return
		}
		select {
		case r.result = <-r.done:
			r.ended = true
		case <-time.After(15 * time.Second):
			sctx, scancel := context.WithCancel(context.Background())
			scancel()
			w.Shutdown(sctx)
			select {
			case <-r.done:
			case <-time.After(5 * time.Second):
			}
			t.Errorf("worker %q did not stop within 15s of its context ending", w.Addr)
		}
	})
	return r
}

// wait waits (bounded) for Run to return and gives its result.
func (r *running) wait(t testing.TB) error {
	t.Helper()
	if r.ended {
		return r.result
	}
	select {
	case r.result = <-r.done:
		r.ended = true
		return r.result
	case <-time.After(20 * time.Second):
		t.Fatalf("Run did not return within 20s")
		return nil
	}
}

// dial connects to the worker; the connection is closed at cleanup.
func (r *running) dial(t testing.TB) net.Conn {
	t.Helper()
	c, err := net.DialTimeout(r.net, r.addr, 5*time.Second)
	if err != nil {
		t.Fatalf("dial %s %s: %v", r.net, r.addr, err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(30 * time.Second))
	return c
}

// dialSmallBufs dials with a small SO_RCVBUF (and SO_SNDBUF) so that a
// client that stops reading makes the server queue quickly.
func (r *running) dialSmallBufs(t testing.TB, size int) net.Conn {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second, Control: func(network, address string, rc syscall.RawConn) error {
		var serr error
		err := rc.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, size)
			if serr == nil {
				serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_SNDBUF, size)
			}
		})
		if err != nil {
			return err
		}
		return serr
	}}
	c, err := d.Dial(r.net, r.addr)
	if err != nil {
		t.Fatalf("dial %s %s: %v", r.net, r.addr, err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(30 * time.Second))
	return c
}

// stats sums a worker's loop counters.
type statSums struct {
	accepted, closed, messages, dropped uint64
	active, queued                      int64
}

func sumStats(w *Worker) statSums {
	var s statSums
	for _, l := range w.Stats().Loops {
		s.accepted += l.Accepted
		s.closed += l.Closed
		s.messages += l.MessagesIn
		s.dropped += l.Dropped
		s.active += l.Active
		s.queued += l.SendQueueBytes
	}
	return s
}

// waitFor polls cond until it holds or timeout passes, then fails.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// onLoop runs f on l and waits for it (bounded).
func onLoop(t testing.TB, l *Loop, f func()) {
	t.Helper()
	done := make(chan struct{})
	if !l.Post(func() { f(); close(done) }) {
		t.Fatalf("Post: loop %d has stopped", l.Index())
	}
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatalf("posted function did not run within 10s")
	}
}

// Frame protocol helpers for clients.

func appendFrame(dst, msg []byte) []byte {
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(msg)+4))
	return append(dst, msg...)
}

func readFrame(r io.Reader) ([]byte, error) {
	var h [4]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return nil, err
	}
	n := binary.BigEndian.Uint32(h[:])
	if n < 4 || n > 16<<20 {
		return nil, fmt.Errorf("bad frame length %d", n)
	}
	b := make([]byte, n-4)
	if _, err := io.ReadFull(r, b); err != nil {
		return nil, err
	}
	return b, nil
}

// echoLine writes line+"\n" and expects the same line back.
func echoLine(t testing.TB, c net.Conn, br *bufio.Reader, line string) {
	t.Helper()
	if _, err := io.WriteString(c, line+"\n"); err != nil {
		t.Fatalf("write %q: %v", line, err)
	}
	got, err := br.ReadString('\n')
	if err != nil {
		t.Fatalf("read answer to %q: %v", line, err)
	}
	if got != line+"\n" {
		t.Fatalf("answer to %q: got %q", line, got)
	}
}

// expectClosed reads until the peer closes: EOF or a reset, within the
// connection's deadline. It fails if data other than allowed arrives.
func expectClosed(t testing.TB, c net.Conn, what string) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 4096)
	for {
		n, err := c.Read(buf)
		if n > 0 {
			t.Fatalf("%s: unexpected %d bytes from server: %q", what, n, buf[:n])
		}
		if err == nil {
			continue
		}
		if err == io.EOF || isReset(err) {
			return
		}
		t.Fatalf("%s: expected EOF or reset, got %v", what, err)
	}
}

func isReset(err error) bool {
	return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// textEcho is an OnMessage that echoes a text message.
func textEcho(c *Conn, msg []byte) { c.Send(msg) }

func contextWithTimeout(d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), d)
}

// listenModes are the ways connections reach loops, for tests that run in
// each.
var listenModes = []struct {
	name      string
	reusePort bool
	accept    AcceptMode
}{
	{"shared", false, AcceptShared},
	{"reuseport", true, AcceptShared},
	{"round-robin", false, AcceptRoundRobin},
	{"least-conns", false, AcceptLeastConns},
}

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

// offsetPayload is n bytes whose value depends on their offset, so that a
// lost, repeated or reordered stretch does not compare equal.
func offsetPayload(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i%251) ^ byte(i>>16)
	}
	return b
}

// execSelf skips a test that runs this test binary as another process
// where that cannot be done: under qemu-user without binfmt_misc, the
// binary is not the host's and exec fails.
func execSelf(t *testing.T) {
	execSelfOnce.Do(func() { execSelfErr = exec.Command(os.Args[0], "-test.run=^$").Run() })
	if execSelfErr != nil {
		t.Skipf("cannot run the test binary as a child process here (emulated?): %v", execSelfErr)
	}
}

var (
	execSelfOnce sync.Once
	execSelfErr  error
)
