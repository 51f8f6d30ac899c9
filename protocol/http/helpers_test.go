package herdhttp

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	nethttp "net/http"
	"regexp"
	"sync"
	"testing"
	"time"

	"github.com/seed358e4494/herd"
	"github.com/seed358e4494/herd/internal/herdtest"
)

// fakeConn stands for a *herd.Conn in tests that run the parser and the
// handlers without a network. The test goroutine plays the loop: posted
// functions run when it calls run.
type fakeConn struct {
	mu       sync.Mutex
	out      bytes.Buffer
	discard  bool
	closed   bool
	aborted  bool
	noLinger bool // closed with CloseNoWait
	paused   bool
	pauses   int
	sends    int // Write calls
	tasks    []func()
	handler  herd.Handler // set by an upgrade: the reads after it go there
}

func (f *fakeConn) SetHandler(h herd.Handler) { f.handler = h }

func (f *fakeConn) Write(b []byte) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return 0, herd.ErrConnClosed
	}
	f.sends++
	if !f.discard {
		f.out.Write(b)
	}
	return len(b), nil
}

func (f *fakeConn) WaitWritable(context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return herd.ErrConnClosed
	}
	return nil
}

func (f *fakeConn) SendQueueBytes() int { return 0 }

func (f *fakeConn) Close() {
	f.mu.Lock()
	f.closed = true
	f.mu.Unlock()
}

func (f *fakeConn) CloseNoWait() {
	f.mu.Lock()
	f.closed, f.noLinger = true, true
	f.mu.Unlock()
}

func (f *fakeConn) Abort() {
	f.mu.Lock()
	f.closed, f.aborted = true, true
	f.mu.Unlock()
}

func (f *fakeConn) PauseRecv() {
	f.mu.Lock()
	f.paused = true
	f.pauses++
	f.mu.Unlock()
}

func (f *fakeConn) ResumeRecv() {
	f.mu.Lock()
	f.paused = false
	f.mu.Unlock()
}

func (f *fakeConn) Hold() *herd.Hold      { return nil }
func (f *fakeConn) RemoteAddr() net.Addr  { return nil }
func (f *fakeConn) LastActive() time.Time { return time.Now() }

// Post and Now make the fake its own loop: posted functions run when the
// test calls harness.run.
func (f *fakeConn) Post(fn func()) bool {
	f.mu.Lock()
	f.tasks = append(f.tasks, fn)
	f.mu.Unlock()
	return true
}

func (f *fakeConn) Now() time.Time { return time.Now() }

// harness is one connection of a Server, fed by hand.
type harness struct {
	t  testing.TB
	s  *Server
	f  *fakeConn
	cs *conn
}

func newHarness(t testing.TB, s *Server) *harness {
	if s.Logger == nil {
		s.Logger = quietLogger()
	}
	f := &fakeConn{}
	return &harness{t: t, s: s, f: f, cs: s.newConn(f, f)}
}

// feed delivers one read, as the loop would (from a buffer the parser may
// write to), then runs what was posted.
func (h *harness) feed(b []byte) {
	buf := append([]byte(nil), b...)
	if h.f.handler != nil {
		h.f.handler.OnData(nil, buf)
	} else {
		h.cs.onData(buf)
	}
	for i := range buf {
		buf[i] = 0xAA // the read buffer is reused: nothing may keep it
	}
	h.run()
}

func (h *harness) feedString(s string) { h.feed([]byte(s)) }

// close is herd closing the connection: the handler it has hears of it.
func (h *harness) close() {
	if h.f.handler != nil {
		h.f.handler.OnClose(nil)
	} else {
		h.cs.OnClose(nil)
	}
}

// run runs the functions posted to the "loop".
func (h *harness) run() {
	for {
		h.f.mu.Lock()
		tasks := h.f.tasks
		h.f.tasks = nil
		h.f.mu.Unlock()
		if len(tasks) == 0 {
			return
		}
		for _, fn := range tasks {
			fn()
		}
	}
}

func (h *harness) output() string {
	h.f.mu.Lock()
	defer h.f.mu.Unlock()
	return h.f.out.String()
}

func (h *harness) closed() bool {
	h.f.mu.Lock()
	defer h.f.mu.Unlock()
	return h.f.closed
}

// closedNoLinger reports whether the connection was closed with
// CloseNoWait: the server judged that the client sends nothing more.
func (h *harness) closedNoLinger() bool {
	h.f.mu.Lock()
	defer h.f.mu.Unlock()
	return h.f.noLinger
}

var dateRE = regexp.MustCompile(`Date: [^\r]*\r\n`)

// normalize removes the Date fields, which change with the second.
func normalize(s string) string { return dateRE.ReplaceAllString(s, "Date: X\r\n") }

// responses parses every response in out (answers to requests, for HEAD
// handling), and returns their status codes and bodies.
type parsed struct {
	code   int
	body   string
	header nethttp.Header
	proto  string
	close  bool
}

func parseResponses(t testing.TB, out string, methods ...string) []parsed {
	t.Helper()
	var res []parsed
	br := bufio.NewReader(bytes.NewBufferString(out))
	for i := 0; ; i++ {
		if _, err := br.Peek(1); err == io.EOF {
			return res
		}
		var req *nethttp.Request
		if i < len(methods) {
			req = &nethttp.Request{Method: methods[i]}
		}
		resp, err := nethttp.ReadResponse(br, req)
		if err != nil {
			t.Fatalf("response %d: %v in %q", i, err, out)
		}
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatalf("response %d body: %v in %q", i, err, out)
		}
		res = append(res, parsed{resp.StatusCode, string(body), resp.Header, resp.Proto, resp.Close})
		if resp.StatusCode == 100 {
			continue
		}
	}
}

func quietLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelError + 4}))
}

// startServer runs s on a one-loop worker over loopback and returns its
// address; the worker stops when the test ends.
func startServer(t testing.TB, s *Server, count int) string {
	t.Helper()
	return serveOn(t, s, &herd.Worker{Addr: "tcp://127.0.0.1:0", Count: count, Logger: quietLogger()})
}

// serveOn attaches s to the worker w, runs it until the test ends and
// returns its address.
func serveOn(t testing.TB, s *Server, w *herd.Worker) string {
	t.Helper()
	if s.Logger == nil {
		s.Logger = quietLogger()
	}
	if err := s.Attach(w); err != nil {
		t.Fatal(err)
	}
	return herdtest.Run(t, w)
}

// dial connects to addr with a deadline that bounds the test.
func dial(t testing.TB, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err == nil {
		c, err = herdtest.Client(c) // over TLS when the tests run over TLS
	}
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	t.Cleanup(func() { c.Close() })
	return c
}

// echoHandler answers with what it saw of the request.
func echoHandler(w *ResponseWriter, r *Request) {
	w.Header().Set("Content-Type", "text/plain")
	w.Write([]byte("m="))
	w.Write(r.Method())
	w.Write([]byte(" p="))
	w.Write(r.Path())
	w.Write([]byte(" q="))
	w.Write(r.RawQuery())
	w.Write([]byte(" b="))
	w.Write(r.Body())
}

func deadlineFar() time.Time { return time.Now().Add(5 * time.Minute) }
