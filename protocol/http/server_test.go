package herdhttp

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/seed358e4494/herd"
)

func TestKeepAliveAndClose(t *testing.T) {
	h := newHarness(t, testServer())
	h.feedString("GET /1 HTTP/1.1\r\nHost: a\r\n\r\n")
	h.feedString("GET /2 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\nGET /3 HTTP/1.1\r\nHost: a\r\n\r\n")
	res := parseResponses(t, h.output())
	if len(res) != 2 || res[0].close || !res[1].close || !h.closed() {
		t.Fatalf("%+v closed=%v", res, h.closed())
	}
	if !strings.Contains(h.output(), "Connection: close\r\n") {
		t.Fatal("no Connection: close in the response")
	}
	if !h.closedNoLinger() {
		t.Error("closed with a linger after the client's Connection: close")
	}

	// HTTP/1.0: closes unless keep-alive, which the response repeats.
	h = newHarness(t, testServer())
	h.feedString("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
	out := h.output()
	if !strings.HasPrefix(out, "HTTP/1.0 200 OK\r\n") || !strings.Contains(out, "Connection: keep-alive\r\n") || h.closed() {
		t.Fatalf("%q", out)
	}
	h.feedString("GET / HTTP/1.0\r\n\r\n")
	if !h.closed() {
		t.Fatal("HTTP/1.0 without keep-alive stayed open")
	}
	if !h.closedNoLinger() {
		t.Error("closed with a linger after an HTTP/1.0 request without keep-alive")
	}

	// The handler says close.
	h = newHarness(t, &Server{Handler: func(w *ResponseWriter, r *Request) {
		w.Header().Set("Connection", "close")
		w.Write([]byte("bye"))
	}})
	h.feedString("GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n")
	res = parseResponses(t, h.output())
	if len(res) != 1 || !res[0].close || !h.closed() || strings.Count(h.output(), "Connection:") != 1 {
		t.Fatalf("%q", h.output())
	}
	if h.closedNoLinger() {
		t.Error("closed without a linger although the client may still send")
	}
}

func TestExpectContinue(t *testing.T) {
	h := newHarness(t, testServer())
	h.feedString("POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
	if out := h.output(); out != "HTTP/1.1 100 Continue\r\n\r\n" {
		t.Fatalf("%q", out)
	}
	h.feedString("hel")
	h.feedString("lo")
	res := parseResponses(t, h.output())
	if len(res) != 2 || res[0].code != 100 || res[1].code != 200 || res[1].body != "m=POST p=/ q= b=hello" {
		t.Fatalf("%+v", res)
	}
	// The body came with the header: no 100.
	h = newHarness(t, testServer())
	h.feedString("POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\nhello")
	if strings.Contains(h.output(), "100 Continue") {
		t.Fatal("100 Continue sent with the body there")
	}
	// Chunked.
	h = newHarness(t, testServer())
	h.feedString("POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nTransfer-Encoding: chunked\r\n\r\n")
	h.feedString("2\r\nhi\r\n0\r\n\r\n")
	res = parseResponses(t, h.output())
	if len(res) != 2 || res[0].code != 100 || res[1].body != "m=POST p=/ q= b=hi" {
		t.Fatalf("%+v", res)
	}
	// Over the limit: 413, no 100.
	h = newHarness(t, testServer())
	h.feedString("POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 1000\r\n\r\n")
	if out := h.output(); !strings.HasPrefix(out, "HTTP/1.1 413 ") || !h.closed() {
		t.Fatalf("%q", out)
	}
}

func TestHead(t *testing.T) {
	h := newHarness(t, &Server{Handler: func(w *ResponseWriter, r *Request) {
		w.Write([]byte("hello, world"))
	}})
	h.feedString("HEAD / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n")
	res := parseResponses(t, h.output(), "HEAD", "GET")
	if len(res) != 2 || res[0].header.Get("Content-Length") != "12" || res[0].body != "" || res[1].body != "hello, world" {
		t.Fatalf("%q", h.output())
	}
	if !strings.Contains(h.output(), "Content-Length: 12\r\n\r\nHTTP/1.1 200 OK") {
		t.Fatalf("HEAD response has a body: %q", h.output())
	}
}

func TestStreaming(t *testing.T) {
	handler := func(w *ResponseWriter, r *Request) {
		w.Write([]byte("one "))
		w.Flush()
		w.Write([]byte("two "))
		w.Flush()
		w.Write([]byte("three"))
	}
	h := newHarness(t, &Server{Handler: handler})
	h.feedString("GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n")
	out := h.output()
	if !strings.Contains(out, "Transfer-Encoding: chunked\r\n\r\n4\r\none \r\n4\r\ntwo \r\n5\r\nthree\r\n0\r\n\r\nHTTP/1.1 200") {
		t.Fatalf("%q", out)
	}
	res := parseResponses(t, out)
	if len(res) != 2 || res[1].body != "one two three" || h.closed() {
		t.Fatalf("%+v", res)
	}
	// HTTP/1.0: close-delimited.
	h = newHarness(t, &Server{Handler: handler})
	h.feedString("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
	out = h.output()
	if !strings.HasSuffix(out, "\r\n\r\none two three") || strings.Contains(out, "Content-Length") || strings.Contains(out, "chunked") || !h.closed() {
		t.Fatalf("%q closed=%v", out, h.closed())
	}
	// Content-Length set by the handler: identity.
	h = newHarness(t, &Server{Handler: func(w *ResponseWriter, r *Request) {
		w.Header().Set("Content-Length", "6")
		w.Write([]byte("abc"))
		w.Flush()
		w.Write([]byte("def"))
	}})
	h.feedString("GET / HTTP/1.1\r\nHost: a\r\n\r\n")
	out = h.output()
	if !strings.HasSuffix(out, "Content-Length: 6\r\n\r\nabcdef") || h.closed() {
		t.Fatalf("%q", out)
	}
}

func TestHeaderInjection(t *testing.T) {
	h := newHarness(t, &Server{Handler: func(w *ResponseWriter, r *Request) {
		w.Header().Set("X-Good", "ok")
		w.Header().Set("X-Bad", "a\r\nSet-Cookie: evil=1")
		w.Header().Set("X-Bad2", "a\nb")
		w.Header().Set("Bad Name", "x")
		w.Header().Set("X-Nul", "a\x00")
		w.Header().Add("X-Multi", "1")
		w.Header().Add("X-Multi", "2")
		w.Header().Set("Transfer-Encoding", "chunked")
		w.Header().Add("X-Gone", "1")
		w.Header().Del("x-gone")
		w.Write([]byte("x"))
	}})
	h.feedString("GET / HTTP/1.1\r\nHost: a\r\n\r\n")
	out := h.output()
	for _, bad := range []string{"evil", "X-Bad", "Bad Name", "X-Nul", "chunked", "X-Gone"} {
		if strings.Contains(out, bad) {
			t.Fatalf("%q in %q", bad, out)
		}
	}
	if !strings.Contains(out, "X-Good: ok\r\nX-Multi: 1\r\nX-Multi: 2\r\n") {
		t.Fatalf("%q", out)
	}
}

func TestStatuses(t *testing.T) {
	for _, code := range []int{204, 304} {
		h := newHarness(t, &Server{Handler: func(w *ResponseWriter, r *Request) {
			w.WriteHeader(code)
			if _, err := w.Write([]byte("x")); err != ErrBodyNotAllowed {
				t.Errorf("Write: %v", err)
			}
		}})
		h.feedString("GET / HTTP/1.1\r\nHost: a\r\n\r\n")
		out := h.output()
		if !strings.HasPrefix(out, fmt.Sprintf("HTTP/1.1 %d ", code)) || strings.Contains(out, "Content-Length") || !strings.HasSuffix(out, "\r\n\r\n") {
			t.Fatalf("%q", out)
		}
	}
	h := newHarness(t, &Server{Handler: func(w *ResponseWriter, r *Request) { Error(w, 404) }})
	h.feedString("GET / HTTP/1.1\r\nHost: a\r\n\r\n")
	if res := parseResponses(t, h.output()); len(res) != 1 || res[0].code != 404 || res[0].body != "404 Not Found\n" || h.closed() {
		t.Fatalf("%q", h.output())
	}
}

func TestPanic(t *testing.T) {
	h := newHarness(t, &Server{Handler: func(w *ResponseWriter, r *Request) {
		w.Write([]byte("partial"))
		panic("boom")
	}})
	h.feedString("GET / HTTP/1.1\r\nHost: a\r\n\r\n")
	res := parseResponses(t, h.output())
	if len(res) != 1 || res[0].code != 500 || !h.closed() {
		t.Fatalf("%q", h.output())
	}
}

// Async responses that end out of order still leave in request order, and
// later synchronous ones wait for them.
func TestAsyncOrder(t *testing.T) {
	var mu sync.Mutex
	var pending []*ResponseWriter
	h := newHarness(t, &Server{Handler: func(w *ResponseWriter, r *Request) {
		if string(r.Path()) == "/slow" {
			w.Async()
			mu.Lock()
			pending = append(pending, w)
			mu.Unlock()
			w.Header().Set("X-Q", string(r.RawQuery()))
			return
		}
		w.Write(r.RawQuery())
	}})
	h.feedString("GET /slow?1 HTTP/1.1\r\nHost: a\r\n\r\nGET /fast?2 HTTP/1.1\r\nHost: a\r\n\r\nGET /slow?3 HTTP/1.1\r\nHost: a\r\n\r\nGET /fast?4 HTTP/1.1\r\nHost: a\r\n\r\n")
	if h.output() != "" {
		t.Fatalf("responses before the first ended: %q", h.output())
	}
	// End the second slow one first, from another goroutine, streaming.
	done := make(chan struct{})
	go func() {
		w := pending[1]
		w.Write([]byte("3a"))
		w.Flush()
		w.Write([]byte("3b"))
		w.End()
		close(done)
	}()
	<-done
	h.run()
	if h.output() != "" {
		t.Fatalf("responses before the first ended: %q", h.output())
	}
	done = make(chan struct{})
	go func() {
		w := pending[0]
		w.Write([]byte("1"))
		w.End()
		close(done)
	}()
	<-done
	h.run()
	res := parseResponses(t, h.output())
	want := []string{"1", "2", "3a3b", "4"}
	if len(res) != len(want) {
		t.Fatalf("%q", h.output())
	}
	for i, r := range res {
		if r.body != want[i] {
			t.Fatalf("response %d = %q, want %q", i, r.body, want[i])
		}
	}
}

// More than MaxInFlight pending responses pause reading; it resumes when
// they drain.
func TestInFlightLimit(t *testing.T) {
	var pending []*ResponseWriter
	h := newHarness(t, &Server{Handler: func(w *ResponseWriter, r *Request) {
		w.Async()
		pending = append(pending, w)
	}})
	h.feedString(strings.Repeat("GET / HTTP/1.1\r\nHost: a\r\n\r\n", 40))
	if len(pending) != MaxInFlight || !h.f.paused {
		t.Fatalf("%d pending, paused=%v", len(pending), h.f.paused)
	}
	for i := 0; i < len(pending); i++ {
		pending[i].End()
		h.run()
	}
	if len(pending) != 40 || h.f.paused {
		t.Fatalf("%d pending, paused=%v", len(pending), h.f.paused)
	}
	if n := len(parseResponses(t, h.output())); n != 40 {
		t.Fatalf("%d responses", n)
	}
}

type recStream struct {
	mu     sync.Mutex
	data   []byte
	closed bool
}

func (s *recStream) OnData(c *herd.Conn, data []byte) {
	s.mu.Lock()
	s.data = append(s.data, data...)
	s.mu.Unlock()
	if c != nil {
		c.Send(data) // echo after the 101
	}
}

func (s *recStream) OnClose(c *herd.Conn) {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
}

func TestUpgrade(t *testing.T) {
	st := &recStream{}
	h := newHarness(t, &Server{Handler: func(w *ResponseWriter, r *Request) {
		if !r.HasToken("Connection", "upgrade") || string(r.Header("upgrade")) != "test" {
			Error(w, 400)
			return
		}
		w.Header().Set("Upgrade", "test")
		w.Header().Set("Connection", "Upgrade")
		w.WriteHeader(101)
		w.Upgrade(st)
	}})
	h.feedString("GET /up HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\nUpgrade: test\r\n\r\nabc")
	h.feedString("GET / HTTP/1.1\r\n")
	out := h.output()
	if out != "HTTP/1.1 101 Switching Protocols\r\nUpgrade: test\r\nConnection: Upgrade\r\n\r\n" {
		t.Fatalf("%q", out)
	}
	if string(st.data) != "abcGET / HTTP/1.1\r\n" {
		t.Fatalf("stream got %q", st.data)
	}
	h.close()
	if !st.closed {
		t.Fatal("OnClose not called")
	}
}

// The upgrade waits for an earlier async response.
func TestUpgradeBehindAsync(t *testing.T) {
	st := &recStream{}
	var first *ResponseWriter
	h := newHarness(t, &Server{Handler: func(w *ResponseWriter, r *Request) {
		if string(r.Path()) == "/slow" {
			w.Async()
			first = w
			return
		}
		w.WriteHeader(101)
		w.Upgrade(st)
	}})
	h.feedString("GET /slow HTTP/1.1\r\nHost: a\r\n\r\nGET /up HTTP/1.1\r\nHost: a\r\n\r\nxyz")
	h.feedString("more")
	if h.output() != "" || len(st.data) != 0 || !h.f.paused {
		t.Fatalf("%q %q", h.output(), st.data)
	}
	first.Write([]byte("first"))
	first.End()
	h.run()
	res := parseResponses(t, h.output())
	if len(res) != 2 || res[0].body != "first" || res[1].code != 101 || string(st.data) != "xyzmore" || h.f.paused {
		t.Fatalf("%q %q", h.output(), st.data)
	}
}

func TestTimeoutsInMemory(t *testing.T) {
	s := &Server{Handler: echoHandler, HeaderTimeout: time.Second, IdleTimeout: 5 * time.Second}
	h := newHarness(t, s)
	h.feedString("GET / HTTP/1.1\r\nHo")
	h.cs.checkTimeouts(nowNano() + int64(500*time.Millisecond))
	if h.output() != "" {
		t.Fatal("timed out early")
	}
	h.cs.checkTimeouts(nowNano() + int64(2*time.Second))
	if out := h.output(); !strings.HasPrefix(out, "HTTP/1.1 408 ") || !h.closed() {
		t.Fatalf("%q", out)
	}
	// Idle between requests: closed quietly.
	h = newHarness(t, s)
	h.feedString("GET / HTTP/1.1\r\nHost: a\r\n\r\n")
	h.cs.checkTimeouts(nowNano() + int64(2*time.Second))
	if h.closed() {
		t.Fatal("closed before the idle timeout")
	}
	h.cs.checkTimeouts(nowNano() + int64(6*time.Second))
	if !h.closed() || strings.Contains(h.output(), "408") {
		t.Fatalf("%q closed=%v", h.output(), h.closed())
	}
	// A stalled body: 408.
	h = newHarness(t, s)
	h.feedString("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc")
	h.cs.checkTimeouts(nowNano() + int64(6*time.Second))
	if !strings.Contains(h.output(), "408") || !h.closed() {
		t.Fatalf("%q", h.output())
	}
	// A pending response is not idleness.
	h = newHarness(t, &Server{Handler: func(w *ResponseWriter, r *Request) { w.Async() }, IdleTimeout: time.Second})
	h.feedString("GET / HTTP/1.1\r\nHost: a\r\n\r\n")
	h.cs.checkTimeouts(nowNano() + int64(time.Hour))
	if h.closed() {
		t.Fatal("closed while a response is pending")
	}
}

func TestRequestAPI(t *testing.T) {
	h := newHarness(t, &Server{Handler: func(w *ResponseWriter, r *Request) {
		var vals []string
		for v := range r.HeaderValues("x-multi") {
			vals = append(vals, string(v))
		}
		n := 0
		for range r.Headers() {
			n++
		}
		a, _ := r.Query("a")
		_, hasC := r.Query("c")
		_, hasZ := r.Query("z")
		fmt.Fprintf(w, "%s|%s|%s|%v|%s|%s|%v|%v|%v|%d|%s|%v", r.Method(), r.Target(), r.Proto(), r.ProtoAtLeast(1, 1),
			a, r.QueryString("b"), hasC, hasZ, strings.Join(vals, ","), n, r.Header("X-MISSING"), r.Header("x-missing") == nil)
	}})
	h.feedString("PUT /p?a=1&b=x%20y&c HTTP/1.1\r\nHost: a\r\nX-Multi: 1\r\nx-multi:  2 \r\n\r\n")
	res := parseResponses(t, h.output())
	want := "PUT|/p?a=1&b=x%20y&c|HTTP/1.1|true|1|x y|true|false|1,2|3||true"
	if len(res) != 1 || res[0].body != want {
		t.Fatalf("%q, want %q", res[0].body, want)
	}
}
