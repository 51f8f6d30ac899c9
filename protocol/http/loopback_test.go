package herdhttp

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"github.com/seed358e4494/herd/internal/herdtest"
	"io"
	"net"
	nethttp "net/http"
	"net/http/httptrace"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/seed358e4494/herd"
	"github.com/seed358e4494/herd/protocol"
)

func newClient() *nethttp.Client {
	return &nethttp.Client{
		Timeout:   10 * time.Second,
		Transport: &nethttp.Transport{MaxIdleConnsPerHost: 4, DisableCompression: true, DialContext: herdtest.DialContext},
	}
}

func TestNetHTTPClient(t *testing.T) {
	var conns atomic.Int32
	s := &Server{Handler: func(w *ResponseWriter, r *Request) {
		sum := sha256.Sum256(r.Body())
		w.Header().Set("Content-Type", "text/plain")
		fmt.Fprintf(w, "%s %s %d %s chunked=%v", r.Method(), r.Path(), len(r.Body()), hex.EncodeToString(sum[:4]), r.Chunked())
	}}
	addr := startServer(t, s, 2)
	client := newClient()
	defer client.CloseIdleConnections()
	ctx := httptrace.WithClientTrace(context.Background(), &httptrace.ClientTrace{
		GotConn: func(info httptrace.GotConnInfo) {
			if !info.Reused {
				conns.Add(1)
			}
		},
	})
	big := bytes.Repeat([]byte("0123456789abcdef"), 100000) // 1.6 MB: many reads
	for i := 0; i < 20; i++ {
		var req *nethttp.Request
		var body []byte
		switch i % 4 {
		case 0:
			req, _ = nethttp.NewRequestWithContext(ctx, "GET", "http://"+addr+"/get", nil)
		case 1:
			body = []byte(fmt.Sprintf("post body %d", i))
			req, _ = nethttp.NewRequestWithContext(ctx, "POST", "http://"+addr+"/post", bytes.NewReader(body))
		case 2:
			// Chunked upload: the body's length is unknown to the client.
			body = big
			pr, pw := io.Pipe()
			go func() {
				for off := 0; off < len(big); off += 70000 {
					pw.Write(big[off:min(off+70000, len(big))])
				}
				pw.Close()
			}()
			req, _ = nethttp.NewRequestWithContext(ctx, "PUT", "http://"+addr+"/chunked", pr)
		case 3:
			body = big[:100000]
			req, _ = nethttp.NewRequestWithContext(ctx, "POST", "http://"+addr+"/big", bytes.NewReader(body))
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(body)
		want := fmt.Sprintf("%s %s %d %s chunked=%v", req.Method, req.URL.Path, len(body), hex.EncodeToString(sum[:4]), i%4 == 2)
		if resp.StatusCode != 200 || string(got) != want {
			t.Fatalf("request %d: %d %q, want %q", i, resp.StatusCode, got, want)
		}
	}
	if n := conns.Load(); n != 1 {
		t.Fatalf("%d connections for 20 sequential requests: keep-alive not reused", n)
	}
}

// Many requests in one write over loopback, with async handlers finishing
// out of order on goroutines.
func TestPipeliningLoopback(t *testing.T) {
	s := &Server{Handler: func(w *ResponseWriter, r *Request) {
		n := 0
		fmt.Sscanf(string(r.Path()), "/%d", &n)
		if n%2 == 0 {
			w.Async()
			go func() {
				time.Sleep(time.Duration(10-n%10) * time.Millisecond)
				fmt.Fprintf(w, "r%d", n)
				w.End()
			}()
			return
		}
		fmt.Fprintf(w, "r%d", n)
	}}
	addr := startServer(t, s, 1)
	c := dial(t, addr)
	var reqs bytes.Buffer
	const N = 50
	for i := 0; i < N; i++ {
		fmt.Fprintf(&reqs, "GET /%d HTTP/1.1\r\nHost: a\r\n\r\n", i)
	}
	if _, err := c.Write(reqs.Bytes()); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	for i := 0; i < N; i++ {
		resp, err := nethttp.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		if string(b) != fmt.Sprintf("r%d", i) {
			t.Fatalf("response %d: %q", i, b)
		}
	}
}

func TestHeaderTimeoutLoopback(t *testing.T) {
	s := &Server{Handler: echoHandler, HeaderTimeout: 150 * time.Millisecond, IdleTimeout: 300 * time.Millisecond}
	addr := startServer(t, s, 1)

	// Headers trickling in: 408, then the connection closes.
	c := dial(t, addr)
	stop := make(chan struct{})
	go func() {
		req := "GET / HTTP/1.1\r\nHost: a\r\nX: " + strings.Repeat("a", 200)
		for i := 0; i < len(req); i++ {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			if _, err := c.Write([]byte{req[i]}); err != nil {
				return
			}
		}
	}()
	out, _ := io.ReadAll(c)
	close(stop)
	if !strings.HasPrefix(string(out), "HTTP/1.1 408 ") {
		t.Fatalf("%q", out)
	}

	// Idle keep-alive connection: closed without a response.
	c = dial(t, addr)
	fmt.Fprint(c, "GET / HTTP/1.1\r\nHost: a\r\n\r\n")
	br := bufio.NewReader(c)
	resp, err := nethttp.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	io.ReadAll(resp.Body)
	rest, err := io.ReadAll(br)
	if err != nil || len(rest) != 0 {
		t.Fatalf("%q %v", rest, err)
	}
}

func TestUpgradeLoopback(t *testing.T) {
	st := &recStream{}
	s := &Server{Handler: func(w *ResponseWriter, r *Request) {
		w.Header().Set("Upgrade", "echo")
		w.Header().Set("Connection", "Upgrade")
		w.WriteHeader(101)
		w.Upgrade(st)
		r.Conn().Send([]byte("hello after 101;"))
	}}
	addr := startServer(t, s, 1)
	c := dial(t, addr)
	fmt.Fprint(c, "GET / HTTP/1.1\r\nHost: a\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\nping;")
	br := bufio.NewReader(c)
	resp, err := nethttp.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != 101 {
		t.Fatal(resp, err)
	}
	want := "hello after 101;ping;"
	got := make([]byte, len(want))
	if _, err := io.ReadFull(br, got); err != nil || string(got) != want {
		t.Fatalf("%q %v", got, err)
	}
	fmt.Fprint(c, "pong")
	got = got[:4]
	if _, err := io.ReadFull(br, got); err != nil || string(got) != "pong" {
		t.Fatalf("%q %v", got, err)
	}
	c.Close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		st.mu.Lock()
		closed := st.closed
		st.mu.Unlock()
		if closed {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("Stream.OnClose not called")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// A net/http ServeMux with method and wildcard patterns, unchanged, through
// the bridge; also streaming with Flusher, and errors.
func TestBridgeServeMux(t *testing.T) {
	mux := nethttp.NewServeMux()
	mux.HandleFunc("GET /items/{id}", func(w nethttp.ResponseWriter, r *nethttp.Request) {
		fmt.Fprintf(w, "item %s host=%s uri=%s q=%s remote=%v", r.PathValue("id"), r.Host, r.RequestURI, r.URL.Query().Get("x"), r.RemoteAddr != "")
	})
	mux.HandleFunc("POST /items", func(w nethttp.ResponseWriter, r *nethttp.Request) {
		b, err := io.ReadAll(r.Body)
		if err != nil {
			nethttp.Error(w, err.Error(), 500)
			return
		}
		w.Header().Set("X-Len", fmt.Sprint(len(b), " ", r.ContentLength))
		w.WriteHeader(201)
		w.Write(b)
	})
	mux.HandleFunc("GET /stream", func(w nethttp.ResponseWriter, r *nethttp.Request) {
		f := w.(nethttp.Flusher)
		for i := 0; i < 3; i++ {
			fmt.Fprintf(w, "part%d;", i)
			f.Flush()
		}
	})
	mux.HandleFunc("GET /panic", func(w nethttp.ResponseWriter, r *nethttp.Request) { panic("boom") })
	mux.HandleFunc("GET /ctx", func(w nethttp.ResponseWriter, r *nethttp.Request) {
		select {
		case <-r.Context().Done():
			w.WriteHeader(500)
		default:
			w.Write([]byte("ctx ok"))
		}
	})
	addr := startServer(t, &Server{Handler: Bridge(mux, 4)}, 2)
	client := newClient()
	defer client.CloseIdleConnections()
	get := func(method, path, body string) (*nethttp.Response, string) {
		t.Helper()
		req, _ := nethttp.NewRequest(method, "http://"+addr+path, strings.NewReader(body))
		if body == "" {
			req.Body = nil
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		return resp, string(b)
	}
	resp, body := get("GET", "/items/42?x=y", "")
	if resp.StatusCode != 200 || body != "item 42 host="+addr+" uri=/items/42?x=y q=y remote=true" {
		t.Fatalf("%d %q", resp.StatusCode, body)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "text/plain; charset=utf-8" {
		t.Fatalf("sniffed %q", ct)
	}
	resp, body = get("POST", "/items", "new item")
	if resp.StatusCode != 201 || body != "new item" || resp.Header.Get("X-Len") != "8 8" {
		t.Fatalf("%d %q %v", resp.StatusCode, body, resp.Header)
	}
	resp, _ = get("DELETE", "/items/1", "")
	if resp.StatusCode != 405 {
		t.Fatalf("DELETE: %d", resp.StatusCode)
	}
	resp, _ = get("GET", "/nothing", "")
	if resp.StatusCode != 404 {
		t.Fatalf("404: %d", resp.StatusCode)
	}
	resp, body = get("GET", "/stream", "")
	if body != "part0;part1;part2;" || len(resp.TransferEncoding) == 0 || resp.TransferEncoding[0] != "chunked" {
		t.Fatalf("%q %v", body, resp.TransferEncoding)
	}
	resp, _ = get("GET", "/panic", "")
	if resp.StatusCode != 500 {
		t.Fatalf("panic: %d", resp.StatusCode)
	}
	_, body = get("GET", "/ctx", "")
	if body != "ctx ok" {
		t.Fatalf("%q", body)
	}
	// Concurrent clients.
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 10; i++ {
				resp, err := client.Get(fmt.Sprintf("http://%s/items/%d", addr, i))
				if err != nil {
					errs <- err
					return
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if !strings.HasPrefix(string(b), fmt.Sprintf("item %d ", i)) {
					errs <- fmt.Errorf("%q", b)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

// A full queue answers 503.
func TestBridgeQueueFull(t *testing.T) {
	release := make(chan struct{})
	var started atomic.Int32
	b := newBridge(nethttp.HandlerFunc(func(w nethttp.ResponseWriter, r *nethttp.Request) {
		started.Add(1)
		<-release
	}), 1)
	addr := startServer(t, &Server{Handler: b.serve}, 1)
	var conns []net.Conn
	// 1 running + 16 queued fill it; the 18th gets 503.
	deadline := time.Now().Add(5 * time.Second)
	for i := 0; i < 17; i++ {
		c := dial(t, addr)
		fmt.Fprint(c, "GET / HTTP/1.1\r\nHost: a\r\n\r\n")
		conns = append(conns, c)
		for i == 0 && started.Load() == 0 && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
	}
	for len(b.jobs) < 16 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	c := dial(t, addr)
	fmt.Fprint(c, "GET / HTTP/1.1\r\nHost: a\r\n\r\n")
	resp, err := nethttp.ReadResponse(bufio.NewReader(c), nil)
	if err != nil || resp.StatusCode != 503 {
		t.Fatal(resp, err)
	}
	close(release)
	for _, c := range conns {
		resp, err := nethttp.ReadResponse(bufio.NewReader(c), nil)
		if err != nil || resp.StatusCode != 200 {
			t.Fatal(resp, err)
		}
	}
}

func TestAttachErrors(t *testing.T) {
	if err := (&Server{}).Attach(&herd.Worker{Addr: "tcp://127.0.0.1:0", Protocol: protocol.Text{}}); err == nil {
		t.Fatal("a Worker with a Protocol accepted")
	}
	w := &herd.Worker{Addr: "tcp://127.0.0.1:0"}
	w.OnMessage = func(*herd.Conn, []byte) {}
	if err := (&Server{}).Attach(w); err == nil {
		t.Fatal("OnMessage overwritten")
	}
	s := &Server{}
	if err := s.Attach(&herd.Worker{Addr: "tcp://127.0.0.1:0"}); err != nil {
		t.Fatal(err)
	}
	if err := s.Attach(&herd.Worker{Addr: "tcp://127.0.0.1:0"}); err != ErrAttached {
		t.Fatal(err)
	}
}

// Attach leaves the Worker's OnConnect and OnClose to the application, for
// its bookkeeping: both run for every HTTP connection.
func TestAttachKeepsBookkeeping(t *testing.T) {
	var opened, closed atomic.Int32
	w := &herd.Worker{Addr: "tcp://127.0.0.1:0", Count: 1, Logger: quietLogger(),
		OnConnect: func(*herd.Conn) { opened.Add(1) },
		OnClose:   func(*herd.Conn) { closed.Add(1) }}
	addr := serveOn(t, &Server{Handler: echoHandler}, w)
	cl := newClient()
	for i := 0; i < 3; i++ {
		resp, err := cl.Get("http://" + addr + "/x")
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		cl.CloseIdleConnections()
	}
	deadline := time.Now().Add(5 * time.Second)
	for closed.Load() < 3 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if opened.Load() != 3 || closed.Load() != 3 {
		t.Errorf("OnConnect ran %d times, OnClose %d; want 3 and 3", opened.Load(), closed.Load())
	}
}

// Go's client gets the 413 for an upload over the limit, whether it sent a
// Content-Length (answered before the body) or chunks.
func TestBodyLimitNetHTTPClient(t *testing.T) {
	addr := startServer(t, &Server{Handler: echoHandler, MaxBodyBytes: 1000}, 1)
	client := newClient()
	defer client.CloseIdleConnections()
	for i := 0; i < 6; i++ {
		var body io.Reader = bytes.NewReader(make([]byte, 4<<20))
		if i%2 == 1 {
			body = io.MultiReader(body) // unknown length: chunked
		}
		resp, err := client.Post("http://"+addr+"/", "text/plain", body)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 413 {
			t.Fatal(resp.StatusCode)
		}
	}
}
