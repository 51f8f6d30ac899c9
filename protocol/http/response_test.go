package herdhttp

import (
	"errors"
	"github.com/seed358e4494/herd/internal/herdtest"
	"io"
	"net"
	nethttp "net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/seed358e4494/herd"
)

// A streamed response never sends more body than its Content-Length: the
// Write that would exceed it fails with ErrContentLength, and the
// connection closes after the response.
func TestContentLengthStreamedExcess(t *testing.T) {
	var errs []error
	h := newHarness(t, &Server{Handler: func(w *ResponseWriter, r *Request) {
		w.Header().Set("Content-Length", "5")
		_, err1 := w.Write([]byte("hello"))
		err2 := w.Flush()
		_, err3 := w.Write([]byte("EXTRA"))
		_, err4 := w.WriteString("MORE")
		errs = []error{err1, err2, err3, err4}
	}})
	h.feedString("GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /next HTTP/1.1\r\nHost: a\r\n\r\n")
	if errs[0] != nil || errs[1] != nil || !errors.Is(errs[2], ErrContentLength) || !errors.Is(errs[3], ErrContentLength) {
		t.Fatalf("errors %v", errs)
	}
	out := h.output()
	if strings.Contains(out, "EXTRA") || strings.Contains(out, "MORE") || strings.Count(out, "HTTP/1.1 ") != 1 {
		t.Fatalf("%q", out)
	}
	res := parseResponses(t, out)
	if len(res) != 1 || res[0].body != "hello" || !h.closed() {
		t.Fatalf("%q closed=%v", out, h.closed())
	}
}

// The same without Flush: a body over the auto-flush threshold.
func TestContentLengthAutoFlushExcess(t *testing.T) {
	var err error
	h := newHarness(t, &Server{Handler: func(w *ResponseWriter, r *Request) {
		w.Header().Set("Content-Length", "5")
		w.Write([]byte("hello"))
		_, err = w.Write(make([]byte, 70000))
	}})
	h.feedString("GET / HTTP/1.1\r\nHost: a\r\n\r\n")
	if !errors.Is(err, ErrContentLength) {
		t.Fatalf("err %v", err)
	}
	out := h.output()
	res := parseResponses(t, out)
	if len(res) != 1 || res[0].body != "hello" || len(out) > 300 || !h.closed() {
		t.Fatalf("%d bytes: %q", len(out), out[:min(len(out), 300)])
	}
}

// A buffered body shorter than its declared Content-Length goes out with
// the declared length and Connection: close: the client sees a short body,
// not a response whose length was silently changed.
func TestContentLengthShortBody(t *testing.T) {
	h := newHarness(t, &Server{Handler: func(w *ResponseWriter, r *Request) {
		w.Header().Set("Content-Length", "10")
		w.Write([]byte("hello"))
	}})
	h.feedString("GET / HTTP/1.1\r\nHost: a\r\n\r\n")
	out := h.output()
	if !strings.Contains(out, "Content-Length: 10\r\n") || !strings.Contains(out, "Connection: close\r\n") || !strings.HasSuffix(out, "\r\n\r\nhello") || !h.closed() {
		t.Fatalf("%q", out)
	}
	// Exactly the declared length: kept alive.
	h = newHarness(t, &Server{Handler: func(w *ResponseWriter, r *Request) {
		w.Header().Set("Content-Length", "5")
		w.Write([]byte("hello"))
	}})
	h.feedString("GET / HTTP/1.1\r\nHost: a\r\n\r\n")
	res := parseResponses(t, h.output())
	if len(res) != 1 || res[0].body != "hello" || res[0].close || h.closed() {
		t.Fatalf("%q", h.output())
	}
}

// Through the Bridge: net/http's ErrContentLength, and nothing beyond the
// declared length on the wire.
func TestBridgeContentLengthExcess(t *testing.T) {
	werr := make(chan error, 1)
	s := &Server{Handler: Bridge(nethttp.HandlerFunc(func(w nethttp.ResponseWriter, r *nethttp.Request) {
		w.Header().Set("Content-Length", "5")
		w.Write([]byte("hello"))
		_, err := w.Write(make([]byte, 70000))
		werr <- err
	}), 2)}
	addr := startServer(t, s, 1)
	c := dial(t, addr)
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: a\r\n\r\n")
	all, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	if err := <-werr; !errors.Is(err, nethttp.ErrContentLength) {
		t.Fatalf("Write: %v", err)
	}
	out := string(all)
	i := strings.Index(out, "\r\n\r\n")
	if i < 0 || out[i+4:] != "hello" || !strings.Contains(out, "Content-Length: 5\r\n") {
		t.Fatalf("%d bytes: %q", len(out), out[:min(len(out), 300)])
	}
}

// A client that asks for a large response and never reads does not keep
// its connection: once the server has closed it (here for IdleTimeout),
// a send queue that makes no progress for the worker's StopTimeout gets it
// aborted (herd's Close).
func TestNonReadingClientAborted(t *testing.T) {
	s := &Server{IdleTimeout: 200 * time.Millisecond, Logger: quietLogger(), Handler: func(w *ResponseWriter, r *Request) {
		chunk := make([]byte, 64<<10)
		for i := 0; i < 128; i++ { // 8 MiB
			if _, err := w.Write(chunk); err != nil {
				return
			}
		}
	}}
	w := &herd.Worker{Addr: "tcp://127.0.0.1:0", Count: 1, Logger: quietLogger(), MaxSendBufferSize: -1, StopTimeout: time.Second}
	addr := serveOn(t, s, w)
	d := net.Dialer{Control: func(network, address string, rc syscall.RawConn) error {
		return rc.Control(func(fd uintptr) {
			syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096)
		})
	}}
	c, err := d.Dial("tcp", addr)
	if err == nil {
		c, err = herdtest.Client(c)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: a\r\n\r\n")
	active := func() int64 {
		var n int64
		for _, l := range w.Stats().Loops {
			n += l.Active
		}
		return n
	}
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) && active() == 0 {
		time.Sleep(10 * time.Millisecond)
	}
	for time.Now().Before(deadline) && active() != 0 {
		time.Sleep(20 * time.Millisecond)
	}
	if n := active(); n != 0 {
		t.Fatalf("%d connections still open", n)
	}
}

// A handler that calls Async and then panics still gets its 500, and the
// requests behind it are answered; a later End is harmless.
func TestAsyncThenPanic(t *testing.T) {
	var ws []*ResponseWriter
	h := newHarness(t, &Server{Handler: func(w *ResponseWriter, r *Request) {
		if string(r.Path()) == "/boom" {
			w.Async()
			ws = append(ws, w)
			panic("boom")
		}
		w.Write([]byte("ok"))
	}})
	h.feedString("GET /boom HTTP/1.1\r\nHost: a\r\n\r\n")
	res := parseResponses(t, h.output())
	if len(res) != 1 || res[0].code != 500 || !h.closed() {
		t.Fatalf("%q", h.output())
	}
	ws[0].End() // the goroutine's End: a no-op
	h.run()
	if strings.Count(h.output(), "HTTP/1.1") != 1 {
		t.Fatalf("%q", h.output())
	}
}

func TestAttachRejectsHugeLimits(t *testing.T) {
	huge := int64(1) << 31
	if int64(int(huge)) != huge {
		t.Skip("32-bit int")
	}
	for _, s := range []*Server{{MaxBodyBytes: int(huge)}, {MaxHeaderBytes: int(huge)}} {
		if err := s.Attach(&herd.Worker{Addr: "tcp://127.0.0.1:0"}); err == nil {
			t.Fatalf("Attach accepted MaxBodyBytes=%d MaxHeaderBytes=%d", s.MaxBodyBytes, s.MaxHeaderBytes)
		}
	}
	if err := (&Server{MaxBodyBytes: int(huge - 1)}).Attach(&herd.Worker{Addr: "tcp://127.0.0.1:0"}); err == nil {
		t.Fatal("Attach accepted a header and body limit over 2 GiB together")
	}
	if err := (&Server{MaxBodyBytes: 1 << 30}).Attach(&herd.Worker{Addr: "tcp://127.0.0.1:0"}); err != nil {
		t.Fatal(err)
	}
}

// A Content-Length set after more body was written, or removed after the
// head went out, still bounds what is sent.
func TestContentLengthSetLate(t *testing.T) {
	h := newHarness(t, &Server{Handler: func(w *ResponseWriter, r *Request) {
		w.Write([]byte("helloworld"))
		w.Header().Set("Content-Length", "5")
	}})
	h.feedString("GET / HTTP/1.1\r\nHost: a\r\n\r\n")
	if out := h.output(); !strings.HasSuffix(out, "Content-Length: 5\r\nConnection: close\r\n\r\nhello") || !h.closed() {
		t.Fatalf("%q", out)
	}
	h = newHarness(t, &Server{Handler: func(w *ResponseWriter, r *Request) {
		w.Header().Set("Content-Length", "5")
		w.Write([]byte("hel"))
		w.Flush()
		w.Header().Del("Content-Length")
		w.Write([]byte("loEXTRA"))
	}})
	h.feedString("GET / HTTP/1.1\r\nHost: a\r\n\r\n")
	if out := h.output(); strings.Contains(out, "EXTRA") || !strings.HasSuffix(out, "\r\n\r\nhel") || !h.closed() {
		t.Fatalf("%q", out)
	}
}
