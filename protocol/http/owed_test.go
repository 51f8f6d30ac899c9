package herdhttp

// Responses are owed: every test here has a slow, stalled or half-closing
// client, and expects every response whole, or a bounded wait and a clean
// end.

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	nethttp "net/http"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/seed358e4494/herd/internal/herdtest"
	"github.com/seed358e4494/herd/internal/soak"
)

// pattern is n bytes that depend on seed and offset, so that a lost,
// repeated or reordered stretch does not compare equal.
func pattern(seed, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i%251) ^ byte(i>>12) ^ byte(seed*31)
	}
	return b
}

// dialSmall connects with small socket buffers, so that a client that
// reads slowly makes the server queue at once.
func dialSmall(t testing.TB, addr string) net.Conn {
	t.Helper()
	d := net.Dialer{Control: func(network, address string, rc syscall.RawConn) error {
		return rc.Control(func(fd uintptr) {
			syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 16<<10)
			// Loopback's MSS is about 64 KiB, more than the buffer: the
			// window would open by less than a segment and the server
			// wait for TCP's persist timer. A real network's MSS keeps a
			// small buffer flowing.
			syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_MAXSEG, 1400)
		})
	}}
	c, err := d.Dial("tcp", addr)
	if err == nil {
		c, err = herdtest.Client(c)
	}
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(60 * time.Second))
	t.Cleanup(func() { c.Close() })
	return c
}

// readResponse reads one response from br (at the throttle's pace) and
// returns its status and whole body.
func readResponse(t testing.TB, br *bufio.Reader, method string) (int, []byte) {
	t.Helper()
	resp, err := nethttp.ReadResponse(br, &nethttp.Request{Method: method})
	if err != nil {
		t.Fatalf("read response: %v", err)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read body (after %d bytes): %v", len(body), err)
	}
	return resp.StatusCode, body
}

func bodyEcho(w *ResponseWriter, r *Request) { w.Write(r.Body()) }

// Finding 1: 24 pipelined 1 MiB POSTs read back at 8 MB/s: 5 whole
// responses, half of the sixth, then a hang. Now all 24 (12 without
// HERD_SOAK), whole, in order.
func TestPipelinedSlowReader(t *testing.T) {
	t.Parallel()
	const size = 1 << 20
	n := 24
	if !soak.Enabled() {
		n = 12 // it hung at the sixth
	}
	addr := startServer(t, &Server{Handler: bodyEcho}, 1)
	c := dialSmall(t, addr)
	go func() {
		for i := 0; i < n; i++ {
			fmt.Fprintf(c, "POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n", size)
			c.Write(pattern(i, size))
		}
	}()
	time.Sleep(200 * time.Millisecond) // stalled at first
	br := bufio.NewReader(herdtest.Throttle(c, 8<<20))
	for i := 0; i < n; i++ {
		code, body := readResponse(t, br, "POST")
		if code != 200 || !bytes.Equal(body, pattern(i, size)) {
			t.Fatalf("response %d: status %d, %d bytes, equal %v", i, code, len(body), bytes.Equal(body, pattern(i, size)))
		}
	}
}

// Finding 2: an 8 MB echo and a 20 MB response to a reader that starts
// late never ended (the last chunk was dropped). Now both end (2 and 5 MB
// without HERD_SOAK).
func TestLargeResponsesEnd(t *testing.T) {
	t.Parallel()
	addr := startServer(t, &Server{Handler: func(w *ResponseWriter, r *Request) {
		if string(r.Path()) == "/echo" {
			bodyEcho(w, r)
			return
		}
		n, _ := strconv.Atoi(string(r.RawQuery()))
		b := pattern(7, n)
		for off := 0; off < n; off += 32 << 10 {
			w.Write(b[off:min(n, off+32<<10)])
		}
	}}, 1)
	c := dialSmall(t, addr)
	echoSize, bigSize := 8_000_000, 20_000_000
	if !soak.Enabled() {
		echoSize, bigSize = 2_000_000, 5_000_000 // still many times the send queue's high mark
	}
	up := pattern(1, echoSize)
	go func() {
		fmt.Fprintf(c, "POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n", len(up))
		c.Write(up)
		fmt.Fprintf(c, "GET /big?%d HTTP/1.1\r\nHost: a\r\n\r\n", bigSize)
	}()
	time.Sleep(time.Second) // the reader starts 1 s late
	br := bufio.NewReader(c)
	if code, body := readResponse(t, br, "POST"); code != 200 || !bytes.Equal(body, up) {
		t.Fatalf("%d-byte echo: status %d, %d bytes", echoSize, code, len(body))
	}
	if code, body := readResponse(t, br, "GET"); code != 200 || !bytes.Equal(body, pattern(7, bigSize)) {
		t.Fatalf("%d-byte response: status %d, %d bytes", bigSize, code, len(body))
	}
}

// Finding 3: a 200 MB stream from an Async goroutine stopped at 5 MB, and
// a bridged 50 MB file read at 50 MB/s got 5 MB: Write and Flush never
// waited. Now the producer waits for the client, and the queue stays near
// its high mark: the stream arrives whole, unthrottled, and the file whole
// at 20 MB/s (20 and 10 MB without HERD_SOAK).
func TestStreamsWaitForClient(t *testing.T) {
	t.Parallel()
	streamSize, fileSize := 200<<20, 50<<20
	if !soak.Enabled() {
		streamSize, fileSize = 20<<20, 10<<20 // still past the 5 MB where they stopped
	}
	file := bytes.Repeat(pattern(3, 1<<20), fileSize>>20)
	var peak atomic.Int64
	mux := nethttp.NewServeMux()
	mux.HandleFunc("/file", func(w nethttp.ResponseWriter, r *nethttp.Request) {
		nethttp.ServeContent(w, r, "f.bin", time.Time{}, bytes.NewReader(file))
	})
	bridged := Bridge(mux, 0)
	s := &Server{Handler: func(w *ResponseWriter, r *Request) {
		if string(r.Path()) != "/stream" {
			bridged(w, r)
			return
		}
		hc := r.Conn()
		w.Async()
		go func() {
			defer w.End()
			chunk := pattern(5, 32<<10)
			for off := 0; off < streamSize; off += len(chunk) {
				if _, err := w.Write(chunk); err != nil {
					t.Errorf("stream Write at %d: %v", off, err)
					return
				}
				if q := int64(hc.SendQueueBytes()); q > peak.Load() {
					peak.Store(q)
				}
			}
		}()
	}}
	addr := startServer(t, s, 1)

	// An unthrottled client of the stream. Through a 16 KiB window at
	// loopback's pace under -race, 200 MB (HERD_SOAK) took over dialSmall's
	// 60 s once in a loaded CI run.
	c := dialSmall(t, addr)
	c.SetDeadline(time.Now().Add(3 * time.Minute))
	io.WriteString(c, "GET /stream HTTP/1.1\r\nHost: a\r\n\r\n")
	code, body := readResponse(t, bufio.NewReader(c), "GET")
	want := bytes.Repeat(pattern(5, 32<<10), streamSize/(32<<10))
	if code != 200 || !bytes.Equal(body, want) {
		t.Fatalf("stream: status %d, %d of %d bytes", code, len(body), streamSize)
	}
	// Default MaxSendBufferSize: high mark 512 KiB; a Write adds at most
	// one flush of 64 KiB and its chunk framing.
	if p := peak.Load(); p > 512<<10+80<<10 {
		t.Errorf("send queue peaked at %d bytes while streaming", p)
	}

	// A bridged file read at 20 MB/s.
	c2 := dialSmall(t, addr)
	io.WriteString(c2, "GET /file HTTP/1.1\r\nHost: a\r\n\r\n")
	code, body = readResponse(t, bufio.NewReader(herdtest.Throttle(c2, 20<<20)), "GET")
	if code != 200 || !bytes.Equal(body, file) {
		t.Fatalf("bridged file: status %d, %d of %d bytes", code, len(body), fileSize)
	}
}

// Finding 4: responses waiting behind an unfinished one were buffered
// whole: a slow request followed by 10 bridged 16 MB responses held 160 MB.
// Now each waits with about 64 KiB: the heap grows by far less than 64 MiB.
func TestHeadOfLineBounded(t *testing.T) {
	// Not parallel: it measures the heap.
	const n, size = 10, 16 << 20
	mux := nethttp.NewServeMux()
	mux.HandleFunc("/big", func(w nethttp.ResponseWriter, r *nethttp.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(size))
		io.Copy(w, io.LimitReader(zeros{}, size))
	})
	bridged := Bridge(mux, 0)
	release := make(chan struct{})
	s := &Server{Handler: func(w *ResponseWriter, r *Request) {
		if string(r.Path()) == "/slow" {
			w.Async()
			go func() {
				<-release
				w.Write([]byte("slow"))
				w.End()
			}()
			return
		}
		bridged(w, r)
	}}
	addr := startServer(t, s, 1)
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	base := ms.HeapInuse

	c := dial(t, addr)
	c.SetDeadline(time.Now().Add(60 * time.Second))
	var pipe bytes.Buffer
	pipe.WriteString("GET /slow HTTP/1.1\r\nHost: a\r\n\r\n")
	for i := 0; i < n; i++ {
		pipe.WriteString("GET /big HTTP/1.1\r\nHost: a\r\n\r\n")
	}
	c.Write(pipe.Bytes())
	peak := uint64(0)
	for i := 0; i < 50; i++ { // 1 s while the first response is unfinished
		time.Sleep(20 * time.Millisecond)
		runtime.ReadMemStats(&ms)
		peak = max(peak, ms.HeapInuse)
	}
	close(release)
	br := bufio.NewReader(c)
	if code, body := readResponse(t, br, "GET"); code != 200 || string(body) != "slow" {
		t.Fatalf("first response: %d %q", code, body)
	}
	for i := 0; i < n; i++ {
		resp, err := nethttp.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("response %d: %v", i+1, err)
		}
		got, err := io.Copy(io.Discard, resp.Body)
		if err != nil || got != size {
			t.Fatalf("response %d: %d bytes, %v", i+1, got, err)
		}
	}
	growth := int64(peak) - int64(base)
	t.Logf("heap grew by %d KiB while %d responses of %d MiB waited", growth>>10, n, size>>20)
	if growth > 64<<20 {
		t.Errorf("heap grew by %d MiB while the responses waited: they are buffered whole", growth>>20)
	}
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }

// Finding 5: a bridged request followed at once by the client's half-close
// (and a request pipelined behind it) got nothing on 7 of 20 connections.
// Now 100 of 100 get both answers.
func TestBridgeHalfClose(t *testing.T) {
	t.Parallel()
	mux := nethttp.NewServeMux()
	mux.HandleFunc("/std/gopher", func(w nethttp.ResponseWriter, r *nethttp.Request) {
		time.Sleep(5 * time.Millisecond)
		io.WriteString(w, "gopher")
	})
	bridged := Bridge(mux, 0)
	addr := startServer(t, &Server{Handler: func(w *ResponseWriter, r *Request) {
		if string(r.Path()) == "/sync" {
			w.Write([]byte("sync"))
			return
		}
		bridged(w, r)
	}}, 2)
	var wg sync.WaitGroup
	var failed atomic.Int32
	for i := 0; i < 100; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := net.Dial("tcp", addr)
			if err == nil {
				c, err = herdtest.Client(c)
			}
			if err != nil {
				t.Error(err)
				failed.Add(1)
				return
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(20 * time.Second))
			io.WriteString(c, "GET /std/gopher HTTP/1.1\r\nHost: a\r\n\r\nGET /sync HTTP/1.1\r\nHost: a\r\n\r\n")
			herdtest.CloseWrite(c)
			br := bufio.NewReader(c)
			for _, want := range []string{"gopher", "sync"} {
				resp, err := nethttp.ReadResponse(br, nil)
				if err != nil {
					t.Errorf("conn %d: waiting for %q: %v", i, want, err)
					failed.Add(1)
					return
				}
				body, err := io.ReadAll(resp.Body)
				if err != nil || string(body) != want {
					t.Errorf("conn %d: got %q, %v; want %q", i, body, err, want)
					failed.Add(1)
					return
				}
			}
		}()
	}
	wg.Wait()
	if n := failed.Load(); n != 0 {
		t.Errorf("%d of 100 half-closing connections lost a response", n)
	}
}

// Finding 6: a body sent a byte at a time met no timeout. Now ReadTimeout
// answers 408 and closes.
func TestSlowUploadTimesOut(t *testing.T) {
	t.Parallel()
	addr := startServer(t, &Server{ReadTimeout: 300 * time.Millisecond, Handler: bodyEcho}, 1)
	c := dial(t, addr)
	io.WriteString(c, "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\n")
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		for i := 0; i < 1000; i++ {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			if _, err := c.Write([]byte("x")); err != nil {
				return
			}
		}
	}()
	start := time.Now()
	code, _ := readResponse(t, bufio.NewReader(c), "POST")
	if code != 408 {
		t.Fatalf("status %d, want 408", code)
	}
	t.Logf("408 after %v", time.Since(start))
}

// Finding 6: stalled uploads held about 1.6 times their size each (the
// input buffer doubled). Now an upload's buffer is its Content-Length.
func TestStalledUploadsBounded(t *testing.T) {
	t.Parallel()
	const size = 1 << 20
	n := 50
	if !soak.Enabled() {
		n = 20
	}
	s := &Server{MaxBodyBytes: size, Handler: bodyEcho}
	addr := startServer(t, s, 1)
	head := fmt.Sprintf("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n", size)
	for i := 0; i < n; i++ {
		c := dial(t, addr)
		io.WriteString(c, head)
		body := pattern(i, size-1) // one byte short: stalled
		for off := 0; off < len(body); off += 48 << 10 {
			c.Write(body[off:min(len(body), off+48<<10)])
			time.Sleep(time.Millisecond)
		}
	}
	var caps []int
	// Up to 50 MiB to read (and, over TLS under -race beside the package's other
	// parallel tests, to decrypt): more than WaitFor's 10 s in a loaded CI.
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		caps = inputCaps(t, s)
		full := 0
		for _, c := range caps {
			if c >= size {
				full++
			}
		}
		if full == n {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d uploads buffered after 60 s", full, n)
		}
	}
	for _, c := range caps {
		if c > len(head)+size {
			t.Errorf("an upload of %d bytes holds a %d-byte buffer", len(head)+size, c)
		}
	}
}

// inputCaps gives the capacity of each connection's input buffer, read on
// the loops.
func inputCaps(t testing.TB, s *Server) []int {
	var caps []int
	for _, ls := range *s.loops.Load() {
		done := make(chan struct{})
		ls.loop.Post(func() {
			for _, cs := range ls.conns {
				caps = append(caps, cap(cs.in))
			}
			close(done)
		})
		<-done
	}
	return caps
}

// Finding 8: HEAD with no body written got Content-Length: 0; an
// absolute-form target's authority was ignored for Host; GET http://h had
// an empty path.
func TestHeadAndAbsoluteForm(t *testing.T) {
	h := newHarness(t, &Server{Handler: func(w *ResponseWriter, r *Request) {
		w.Header().Set("X-Host", string(r.Host()))
		w.Header().Set("X-Path", string(r.Path()))
	}})
	h.feedString("HEAD / HTTP/1.1\r\nHost: a\r\n\r\nGET http://real.example HTTP/1.1\r\nHost: other\r\n\r\n")
	res := parseResponses(t, h.output(), "HEAD", "GET")
	if len(res) != 2 {
		t.Fatalf("%d responses", len(res))
	}
	if v, ok := res[0].header["Content-Length"]; ok {
		t.Errorf("HEAD with no body written: Content-Length %q, want none", v)
	}
	if got := res[1].header.Get("X-Host"); got != "real.example" {
		t.Errorf("Host of an absolute-form request: %q", got)
	}
	if got := res[1].header.Get("X-Path"); got != "/" {
		t.Errorf("Path of GET http://real.example: %q", got)
	}
}

// IdleTimeout ends a client that takes nothing of its response, but not
// one that reads slowly and steadily while an Async producer keeps
// refilling the queue (the queue's size then says nothing of progress).
func TestSlowSteadyReaderNotIdle(t *testing.T) {
	t.Parallel()
	// 12 MiB at 2 MB/s: the queue is never empty for about 6 s, twice the
	// IdleTimeout, and a loaded CI machine's pause of under 3 seconds does
	// not look like a stall. (At 1 s, a CI run under -race over TLS, with
	// the client decrypting at a fifth of the rate, once stalled past it.)
	const size = 12 << 20
	addr := startServer(t, &Server{IdleTimeout: 3 * time.Second, Handler: func(w *ResponseWriter, r *Request) {
		w.Async()
		go func() {
			defer w.End()
			chunk := pattern(9, 32<<10)
			for off := 0; off < size; off += len(chunk) {
				if _, err := w.Write(chunk); err != nil {
					return
				}
			}
		}()
	}}, 1)
	c := dialSmall(t, addr)
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: a\r\n\r\n")
	code, body := readResponse(t, bufio.NewReader(herdtest.Throttle(c, 2<<20)), "GET")
	if code != 200 || len(body) != size {
		t.Fatalf("status %d, %d of %d bytes: a steady reader was cut off", code, len(body), size)
	}
}

// A large response does not grow a buffer per response past what the pool
// keeps: 64 KiB responses cost the server no more than a few hundred
// bytes of allocation each (the client here reads raw bytes into a fixed
// buffer). Before, each allocated 157 KB (the batch grown past 64 KiB,
// then dropped), which made a 64 KiB response cost over twice the CPU of
// net/http's.
func TestLargeResponseAllocations(t *testing.T) {
	switch {
	case herdtest.OverTLS():
		t.Skip("the client here reads raw bytes")
	case raceDetector:
		t.Skip("under the race detector, sync.Pool drops a share of what it is given")
	}
	const size, n = 64 << 10, 200
	body := bytes.Repeat([]byte("x"), size)
	addr := startServer(t, &Server{Handler: func(w *ResponseWriter, r *Request) { w.Write(body) }}, 1)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	br := bufio.NewReaderSize(c, 64<<10)
	req := []byte("GET / HTTP/1.1\r\nHost: a\r\n\r\n")
	end := []byte("\r\n0\r\n\r\n") // the last chunk
	roundTrip := func() {
		if _, err := c.Write(req); err != nil {
			t.Fatal(err)
		}
		var tail [len("\r\n0\r\n\r\n")]byte
		got := 0
		for !bytes.Equal(tail[:], end) {
			b, err := br.ReadByte()
			if err != nil {
				t.Fatalf("after %d bytes: %v", got, err)
			}
			copy(tail[:], tail[1:])
			tail[len(tail)-1] = b
			got++
		}
		if got < size {
			t.Fatalf("a response of %d bytes, want over %d", got, size)
		}
	}
	for range 20 {
		roundTrip() // warm the pools
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for range n {
		roundTrip()
	}
	runtime.ReadMemStats(&after)
	perResponse := (after.TotalAlloc - before.TotalAlloc) / n
	t.Logf("%d bytes allocated per 64 KiB response (server and client)", perResponse)
	if perResponse > 8<<10 {
		t.Errorf("%d bytes allocated per 64 KiB response, want under 8 KiB", perResponse)
	}
}
