package herdhttp

import (
	"bufio"
	"bytes"
	"io"
	"net"
	nethttp "net/http"
	"strconv"
	"testing"
)

var helloBody = []byte("Hello, World!")

func helloHandler(w *ResponseWriter, r *Request) {
	w.Header().Set("Content-Type", "text/plain")
	w.Write(helloBody)
}

const helloRequest = "GET /plaintext HTTP/1.1\r\nHost: localhost:8080\r\nUser-Agent: bench\r\nAccept: */*\r\nConnection: keep-alive\r\n\r\n"

// BenchmarkHello runs requests through the parser, the handler and the
// response encoder, without the network: one request per read, as a
// keep-alive client sends them. Steady state allocates nothing.
func BenchmarkHello(b *testing.B) {
	h := newHarness(b, &Server{Handler: helloHandler})
	h.f.discard = true
	req := []byte(helloRequest)
	buf := make([]byte, len(req))
	b.ReportAllocs()
	b.SetBytes(int64(len(req)))
	for b.Loop() {
		copy(buf, req)
		h.cs.onData(buf)
	}
	if h.closed() {
		b.Fatal("closed")
	}
}

// BenchmarkHelloPipelined: 16 requests per read.
func BenchmarkHelloPipelined(b *testing.B) {
	h := newHarness(b, &Server{Handler: helloHandler})
	h.f.discard = true
	req := bytes.Repeat([]byte(helloRequest), 16)
	buf := make([]byte, len(req))
	b.ReportAllocs()
	b.SetBytes(int64(len(req)))
	for b.Loop() {
		copy(buf, req)
		h.cs.onData(buf)
	}
}

// BenchmarkHelloLoopback: one keep-alive client over loopback, one request
// at a time, against a one-loop server.
func BenchmarkHelloLoopback(b *testing.B) {
	addr := startServer(b, &Server{Handler: helloHandler}, 1)
	c := dial(b, addr)
	req := []byte(helloRequest)
	// Every response has the same length (Date is fixed-width).
	c.Write(req)
	first := make([]byte, 4096)
	n, err := c.Read(first)
	if err != nil || !bytes.HasSuffix(first[:n], helloBody) {
		b.Fatalf("%q %v", first[:n], err)
	}
	resp := make([]byte, n)
	c.SetDeadline(deadlineFar())
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.Write(req); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(c, resp); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkLargeResponse: one Write of 64 KiB or 1 MiB per response over
// loopback, client and server in this process; B/op counts both (the
// client's net/http parsing is under 1 KB of it).
func BenchmarkLargeResponse(b *testing.B) {
	for _, size := range []int{64 << 10, 1 << 20} {
		b.Run(strconv.Itoa(size>>10)+"KiB", func(b *testing.B) {
			body := bytes.Repeat([]byte("x"), size)
			addr := startServer(b, &Server{Handler: func(w *ResponseWriter, r *Request) { w.Write(body) }}, 1)
			c, err := net.Dial("tcp", addr)
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			br := bufio.NewReader(c)
			b.ReportAllocs()
			b.SetBytes(int64(size))
			b.ResetTimer()
			for range b.N {
				io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
				resp, err := nethttp.ReadResponse(br, nil)
				if err != nil {
					b.Fatal(err)
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		})
	}
}
