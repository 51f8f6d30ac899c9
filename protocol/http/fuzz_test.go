package herdhttp

import (
	"bufio"
	"bytes"
	"io"
	nethttp "net/http"
	"net/http/httputil"
	"testing"
)

type seen struct {
	method, target, body string
}

// fuzzRun feeds data in the given pieces to a server with small limits and
// returns the normalized output, whether the connection closed, and the
// requests the handler saw.
func fuzzRun(t *testing.T, pieces [][]byte) (string, bool, []seen) {
	var got []seen
	s := &Server{MaxHeaderBytes: 512, MaxBodyBytes: 1024, Handler: func(w *ResponseWriter, r *Request) {
		got = append(got, seen{string(r.Method()), string(r.Target()), string(r.Body())})
		w.Write(r.Body())
	}}
	h := newHarness(t, s)
	for _, p := range pieces {
		h.feed(p)
		// Never more buffered than the limits allow, plus one read.
		if limit := 2*(512+1024+maxChunkLine) + len(p); cap(h.cs.in) > max(limit, 4096) {
			t.Fatalf("buffer of %d bytes (limit %d)", cap(h.cs.in), limit)
		}
	}
	return normalize(h.output()), h.closed(), got
}

func addSeeds(f *testing.F) {
	for _, tc := range framingCases {
		f.Add([]byte(tc.req), uint16(len(tc.req)/2), uint16(len(tc.req)/3))
	}
	f.Add([]byte("GET / HTTP/1.1\r\nHost: a\r\n\r\nPOST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabcGET / HTTP/1.1\r\nHost: a\r\n\r\n"), uint16(30), uint16(70))
}

func FuzzParse(f *testing.F) {
	addSeeds(f)
	f.Fuzz(func(t *testing.T, data []byte, s1, s2 uint16) {
		if len(data) > 8192 {
			return
		}
		out, closed, got := fuzzRun(t, [][]byte{data})
		// However the input is split, the same answers.
		a, b := int(s1)%(len(data)+1), int(s2)%(len(data)+1)
		if a > b {
			a, b = b, a
		}
		out2, closed2, got2 := fuzzRun(t, [][]byte{data[:a], data[a:b], data[b:]})
		if out != out2 || closed != closed2 || len(got) != len(got2) {
			t.Fatalf("split at %d,%d: %q (closed %v) vs %q (closed %v)", a, b, out, closed, out2, closed2)
		}
		// Where net/http reads the same stream, it must see the same
		// requests: same method, target and body (no framing
		// disagreement to smuggle through).
		br := bufio.NewReader(bytes.NewReader(data))
		for i, g := range got {
			req, err := nethttp.ReadRequest(br)
			if err != nil {
				break
			}
			body, err := io.ReadAll(req.Body)
			if err != nil {
				break
			}
			if req.Method != g.method || req.RequestURI != g.target || string(body) != g.body {
				t.Fatalf("request %d: herd %q %q %q, net/http %q %q %q", i, g.method, g.target, g.body, req.Method, req.RequestURI, body)
			}
		}
	})
}

func FuzzChunked(f *testing.F) {
	f.Add([]byte("5\r\nhello\r\n0\r\n\r\n"), uint16(3))
	f.Add([]byte("5;a=b\r\nhello\r\n6\r\n world\r\n0\r\nX: y\r\n\r\n"), uint16(9))
	f.Add([]byte("A\r\n0123456789\r\n0\r\n\r\n"), uint16(1))
	f.Add([]byte("1\r\na\r\n1\r\nb\r\n1\r\nc\r\n0\r\n\r\n"), uint16(12))
	f.Add([]byte("fffffffffffffffff\r\n"), uint16(1))
	f.Add([]byte("5\nhello\n0\n\n"), uint16(4))
	const head = "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
	f.Fuzz(func(t *testing.T, body []byte, split uint16) {
		if len(body) > 8192 {
			return
		}
		data := append([]byte(head), body...)
		out, closed, got := fuzzRun(t, [][]byte{data})
		a := int(split) % (len(data) + 1)
		out2, closed2, _ := fuzzRun(t, [][]byte{data[:a], data[a:]})
		if out != out2 || closed != closed2 {
			t.Fatalf("split at %d: %q vs %q", a, out, out2)
		}
		if len(got) == 0 {
			return
		}
		// Accepted: Go's own chunked reader must decode the same body.
		want, err := io.ReadAll(httputil.NewChunkedReader(bytes.NewReader(body)))
		if err != nil {
			t.Fatalf("herd accepted %q (body %q), net/http/httputil: %v", body, got[0].body, err)
		}
		if string(want) != got[0].body {
			t.Fatalf("herd decoded %q, httputil %q", got[0].body, want)
		}
	})
}
