package herdhttp

import (
	"fmt"
	"strings"
	"testing"
)

type framingCase struct {
	name   string
	req    string
	status int
	close  bool
	body   string // expected response body for 200s ("" = don't check)
}

const host = "Host: a\r\n"

var framingCases = []framingCase{
	{"simple", "GET / HTTP/1.1\r\n" + host + "\r\n", 200, false, "m=GET p=/ q= b="},
	{"query", "GET /x/y?a=1&b=2 HTTP/1.1\r\n" + host + "\r\n", 200, false, "m=GET p=/x/y q=a=1&b=2 b="},
	{"content-length body", "POST /p HTTP/1.1\r\n" + host + "Content-Length: 5\r\n\r\nhello", 200, false, "m=POST p=/p q= b=hello"},
	{"identical content-lengths", "POST / HTTP/1.1\r\n" + host + "Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello", 200, false, "m=POST p=/ q= b=hello"},
	{"identical content-length list", "POST / HTTP/1.1\r\n" + host + "Content-Length: 5, 5\r\n\r\nhello", 200, false, "m=POST p=/ q= b=hello"},
	{"content-length ows", "POST / HTTP/1.1\r\n" + host + "Content-Length: \t5 \r\n\r\nhello", 200, false, "m=POST p=/ q= b=hello"},
	{"chunked", "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", 200, false, "m=POST p=/ q= b=hello world"},
	{"chunked case-insensitive", "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: Chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", 200, false, "m=POST p=/ q= b=hello"},
	{"chunk extensions", "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\n\r\n5;a=b;c ; d = \"x\\\"y\"\r\nhello\r\n0;z\r\n\r\n", 200, false, "m=POST p=/ q= b=hello"},
	{"chunk size leading zeros", "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\n\r\n00005\r\nhello\r\n000\r\n\r\n", 200, false, "m=POST p=/ q= b=hello"},
	{"chunk size 16 digits", "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\n\r\n0000000000000005\r\nhello\r\n0\r\n\r\n", 200, false, "m=POST p=/ q= b=hello"},
	{"chunk size hex", "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\n\r\nA\r\n0123456789\r\n0\r\n\r\n", 200, false, "m=POST p=/ q= b=0123456789"},
	{"trailers", "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-T: v\r\nY: w\r\n\r\n", 200, false, "m=POST p=/ q= b=hello"},
	{"leading empty line", "\r\nGET / HTTP/1.1\r\n" + host + "\r\n", 200, false, ""},
	{"absolute form", "GET http://example.com/x?y=1 HTTP/1.1\r\n" + host + "\r\n", 200, false, "m=GET p=/x q=y=1 b="},
	// RFC 9112, 3.2.1: an empty path is "/" (as net/http reads it).
	{"absolute form no path", "GET http://example.com HTTP/1.1\r\n" + host + "\r\n", 200, false, "m=GET p=/ q= b="},
	{"options asterisk", "OPTIONS * HTTP/1.1\r\n" + host + "\r\n", 200, false, "m=OPTIONS p=* q= b="},
	{"connect authority", "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", 200, false, ""},
	{"host with port", "GET / HTTP/1.1\r\nHost: example.com:8080\r\n\r\n", 200, false, ""},
	{"host ipv4", "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 200, false, ""},
	{"host ipv6", "GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n", 200, false, ""},
	{"host reg-name chars", "GET / HTTP/1.1\r\nHost: a-b_c.~d%41!$&'()*+,;=\r\n\r\n", 200, false, ""},
	{"host empty", "GET / HTTP/1.1\r\nHost:\r\n\r\n", 200, false, ""},
	{"host empty port", "GET / HTTP/1.1\r\nHost: a:\r\n\r\n", 200, false, ""},
	{"host with space", "GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400, true, ""},
	{"host with userinfo", "GET / HTTP/1.1\r\nHost: u@a\r\n\r\n", 400, true, ""},
	{"host with slash", "GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", 400, true, ""},
	{"host bad port", "GET / HTTP/1.1\r\nHost: a:8x\r\n\r\n", 400, true, ""},
	{"host two colons", "GET / HTTP/1.1\r\nHost: a:1:2\r\n\r\n", 400, true, ""},
	{"host ipv6 unclosed", "GET / HTTP/1.1\r\nHost: [::1\r\n\r\n", 400, true, ""},
	{"host ipv6 bad char", "GET / HTTP/1.1\r\nHost: [::g]\r\n\r\n", 400, true, ""},
	{"host obs-text", "GET / HTTP/1.1\r\nHost: caf\xc3\xa9\r\n\r\n", 400, true, ""},
	{"host http/1.0", "GET / HTTP/1.0\r\nHost: a b\r\n\r\n", 400, true, ""},
	{"http/1.0 closes", "GET / HTTP/1.0\r\n\r\n", 200, true, ""},
	{"http/1.0 keep-alive", "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", 200, false, ""},
	{"http/1.1 close", "GET / HTTP/1.1\r\n" + host + "Connection: close\r\n\r\n", 200, true, ""},
	{"http/1.2 served as 1.1", "GET / HTTP/1.2\r\n" + host + "\r\n", 200, false, ""},
	{"tab in value", "GET / HTTP/1.1\r\n" + host + "X: a\tb\r\n\r\n", 200, false, ""},
	{"obs-text in value", "GET / HTTP/1.1\r\n" + host + "X: caf\xc3\xa9\r\n\r\n", 200, false, ""},
	{"empty value", "GET / HTTP/1.1\r\n" + host + "X:\r\n\r\n", 200, false, ""},

	// Smuggling defenses.
	{"cl and te", "POST / HTTP/1.1\r\n" + host + "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, true, ""},
	{"te and cl", "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n", 400, true, ""},
	{"different content-lengths", "POST / HTTP/1.1\r\n" + host + "Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", 400, true, ""},
	{"different content-length list", "POST / HTTP/1.1\r\n" + host + "Content-Length: 5, 6\r\n\r\nhello!", 400, true, ""},
	{"content-length empty element", "POST / HTTP/1.1\r\n" + host + "Content-Length: 5,\r\n\r\nhello", 400, true, ""},
	{"content-length empty", "POST / HTTP/1.1\r\n" + host + "Content-Length:\r\n\r\n", 400, true, ""},
	{"content-length plus", "POST / HTTP/1.1\r\n" + host + "Content-Length: +5\r\n\r\nhello", 400, true, ""},
	{"content-length negative", "POST / HTTP/1.1\r\n" + host + "Content-Length: -1\r\n\r\n", 400, true, ""},
	{"content-length hex", "POST / HTTP/1.1\r\n" + host + "Content-Length: 0x5\r\n\r\nhello", 400, true, ""},
	{"content-length letters", "POST / HTTP/1.1\r\n" + host + "Content-Length: 5a\r\n\r\nhello", 400, true, ""},
	{"content-length inner space", "POST / HTTP/1.1\r\n" + host + "Content-Length: 1 0\r\n\r\nhellohello", 400, true, ""},
	{"content-length overflow", "POST / HTTP/1.1\r\n" + host + "Content-Length: 99999999999999999999\r\n\r\n", 400, true, ""},
	{"content-length absurd but fits", "POST / HTTP/1.1\r\n" + host + "Content-Length: 9223372036854775807\r\n\r\n", 413, true, ""},
	{"te gzip", "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: gzip\r\n\r\n", 400, true, ""},
	{"te identity", "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: identity\r\n\r\n", 400, true, ""},
	{"te chunked then gzip", "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked, gzip\r\n\r\n", 400, true, ""},
	{"te gzip then chunked", "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501, true, ""},
	{"te two fields gzip chunked", "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 501, true, ""},
	{"te chunked twice", "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n", 400, true, ""},
	{"te chunked twice in fields", "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, true, ""},
	{"te empty", "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: \r\n\r\n", 400, true, ""},
	{"te chunked with params", "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked;q=1\r\n\r\n0\r\n\r\n", 400, true, ""},
	{"te xchunked", "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", 400, true, ""},
	{"te in http/1.0", "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, true, ""},
	{"chunk size bad", "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\n\r\nzz\r\n", 400, true, ""},
	{"chunk size empty", "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\n\r\n\r\n", 400, true, ""},
	{"chunk size 17 digits", "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\n\r\n00000000000000000\r\n\r\n", 400, true, ""},
	{"chunk size negative", "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\n\r\n-1\r\n", 400, true, ""},
	{"chunk size 0x", "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n", 400, true, ""},
	{"chunk size space inside", "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\n\r\n5 5\r\n", 400, true, ""},
	{"chunk size overflow", "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\n\r\nfffffffffffffffff\r\n", 400, true, ""},
	{"chunk size overflow 2^64", "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\n\r\n10000000000000000\r\n", 400, true, ""},
	{"chunk size huge", "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\n\r\n7fffffffffffffff\r\n", 413, true, ""},
	{"chunk ext no name", "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\n\r\n5;\r\nhello\r\n0\r\n\r\n", 400, true, ""},
	{"chunk ext empty value", "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\n\r\n5;a=\r\nhello\r\n0\r\n\r\n", 400, true, ""},
	{"chunk ext bad char", "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\n\r\n5;a@b\r\nhello\r\n0\r\n\r\n", 400, true, ""},
	{"chunk ext unterminated quote", "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\n\r\n5;a=\"b\r\nhello\r\n0\r\n\r\n", 400, true, ""},
	{"chunk ext control", "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\n\r\n5;a=\"\x01\"\r\nhello\r\n0\r\n\r\n", 400, true, ""},
	{"chunk data too long", "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\n\r\n5\r\nhello!\r\n0\r\n\r\n", 400, true, ""},
	{"chunk data bare LF", "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\n0\r\n\r\n", 400, true, ""},
	{"chunk line bare LF", "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n", 400, true, ""},
	{"last chunk bare LF", "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\n\r\n0\n\r\n", 400, true, ""},
	{"trailer bad", "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\n\r\n0\r\nbad trailer\r\n\r\n", 400, true, ""},
	{"trailer obs-fold", "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\n\r\n0\r\nX: a\r\n b\r\n\r\n", 400, true, ""},
	{"trailer bare LF end", "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\n\r\n0\r\n\n", 400, true, ""},
	{"obs-fold", "GET / HTTP/1.1\r\n" + host + "X: a\r\n b\r\n\r\n", 400, true, ""},
	{"obs-fold tab", "GET / HTTP/1.1\r\n" + host + "X: a\r\n\tb\r\n\r\n", 400, true, ""},
	{"first field folded", "GET / HTTP/1.1\r\n Host: a\r\n\r\n", 400, true, ""},
	{"space before colon", "GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400, true, ""},
	{"tab before colon", "GET / HTTP/1.1\r\n" + host + "Content-Length\t: 0\r\n\r\n", 400, true, ""},
	{"space in name", "GET / HTTP/1.1\r\n" + host + "X Y: a\r\n\r\n", 400, true, ""},
	{"empty name", "GET / HTTP/1.1\r\n" + host + ": a\r\n\r\n", 400, true, ""},
	{"no colon", "GET / HTTP/1.1\r\n" + host + "Xa\r\n\r\n", 400, true, ""},
	{"bad name char", "GET / HTTP/1.1\r\n" + host + "X(a): b\r\n\r\n", 400, true, ""},
	{"del in name", "GET / HTTP/1.1\r\n" + host + "X\x7f: b\r\n\r\n", 400, true, ""},
	{"nul in value", "GET / HTTP/1.1\r\n" + host + "X: a\x00b\r\n\r\n", 400, true, ""},
	{"ctl in value", "GET / HTTP/1.1\r\n" + host + "X: a\x01b\r\n\r\n", 400, true, ""},
	{"del in value", "GET / HTTP/1.1\r\n" + host + "X: a\x7fb\r\n\r\n", 400, true, ""},
	{"cr in value", "GET / HTTP/1.1\r\n" + host + "X: a\rb\r\n\r\n", 400, true, ""},
	{"bare LF in headers", "GET / HTTP/1.1\r\nHost: a\n\r\n", 400, true, ""},
	{"bare LF everywhere", "GET / HTTP/1.1\nHost: a\n\n", 400, true, ""},
	{"bare LF end", "GET / HTTP/1.1\r\nHost: a\r\n\n", 400, true, ""},
	{"bare CR line end", "GET / HTTP/1.1\rHost: a\r\n\r\n", 400, true, ""},
	{"no host", "GET / HTTP/1.1\r\n\r\n", 400, true, ""},
	{"two hosts", "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, true, ""},
	{"two hosts 1.0", "GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n", 400, true, ""},
	{"expect other", "POST / HTTP/1.1\r\n" + host + "Expect: something\r\nContent-Length: 1\r\n\r\nx", 417, true, ""},

	// Request line.
	{"double space", "GET  / HTTP/1.1\r\n" + host + "\r\n", 400, true, ""},
	{"tab separator", "GET\t/ HTTP/1.1\r\n" + host + "\r\n", 400, true, ""},
	{"trailing space", "GET / HTTP/1.1 \r\n" + host + "\r\n", 400, true, ""},
	{"leading space", " GET / HTTP/1.1\r\n" + host + "\r\n", 400, true, ""},
	{"method not token", "G@T / HTTP/1.1\r\n" + host + "\r\n", 400, true, ""},
	{"no version", "GET /\r\n" + host + "\r\n", 400, true, ""},
	{"only method", "GET\r\n\r\n", 400, true, ""},
	{"lowercase http", "GET / http/1.1\r\n" + host + "\r\n", 400, true, ""},
	{"version no dot", "GET / HTTP/11\r\n" + host + "\r\n", 400, true, ""},
	{"version two digits", "GET / HTTP/1.10\r\n" + host + "\r\n", 400, true, ""},
	{"version letters", "GET / HTTP/a.b\r\n" + host + "\r\n", 400, true, ""},
	{"http/2.0", "GET / HTTP/2.0\r\n" + host + "\r\n", 505, true, ""},
	{"http/0.9", "GET / HTTP/0.9\r\n" + host + "\r\n", 505, true, ""},
	{"http/3.1", "GET / HTTP/3.1\r\n" + host + "\r\n", 505, true, ""},
	{"target relative", "GET foo HTTP/1.1\r\n" + host + "\r\n", 400, true, ""},
	{"target with space", "GET /a b HTTP/1.1\r\n" + host + "\r\n", 400, true, ""},
	{"target control", "GET /a\x01 HTTP/1.1\r\n" + host + "\r\n", 400, true, ""},
	{"target non-ascii", "GET /caf\xc3\xa9 HTTP/1.1\r\n" + host + "\r\n", 400, true, ""},
	{"target fragment", "GET /a#b HTTP/1.1\r\n" + host + "\r\n", 400, true, ""},
	{"asterisk not options", "GET * HTTP/1.1\r\n" + host + "\r\n", 400, true, ""},
	{"connect origin form", "CONNECT /x HTTP/1.1\r\n" + host + "\r\n", 400, true, ""},
	{"absolute no host", "GET http:///x HTTP/1.1\r\n" + host + "\r\n", 400, true, ""},

	// Limits (the test server's: 1 KiB of header, 64 bytes of body).
	{"header at limit", "GET / HTTP/1.1\r\n" + host + "X: " + strings.Repeat("a", 1024-16-9-3-2-2) + "\r\n\r\n", 200, false, ""},
	{"header over limit", "GET / HTTP/1.1\r\n" + host + "X: " + strings.Repeat("a", 1024-16-9-3-2-2+1) + "\r\n\r\n", 431, true, ""},
	{"header line without end", "GET / HTTP/1.1\r\n" + host + "X: " + strings.Repeat("a", 2000), 431, true, ""},
	{"request line too long", "GET /" + strings.Repeat("a", 2000) + " HTTP/1.1\r\n" + host + "\r\n", 431, true, ""},
	{"many empty lines", strings.Repeat("\r\n", 600) + "GET / HTTP/1.1\r\n" + host + "\r\n", 431, true, ""},
	{"body at limit", "POST / HTTP/1.1\r\n" + host + "Content-Length: 64\r\n\r\n" + strings.Repeat("b", 64), 200, false, ""},
	{"body over limit", "POST / HTTP/1.1\r\n" + host + "Content-Length: 65\r\n\r\n" + strings.Repeat("b", 65), 413, true, ""},
	{"body over limit, none sent", "POST / HTTP/1.1\r\n" + host + "Content-Length: 1000000\r\n\r\n", 413, true, ""},
	{"chunked at limit", "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\n\r\n20\r\n" + strings.Repeat("c", 32) + "\r\n20\r\n" + strings.Repeat("c", 32) + "\r\n0\r\n\r\n", 200, false, ""},
	{"chunked over limit", "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\n\r\n20\r\n" + strings.Repeat("c", 32) + "\r\n21\r\n", 413, true, ""},
	{"chunk line too long", "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\n\r\n5;a=" + strings.Repeat("x", 5000) + "\r\n", 400, true, ""},
	{"trailers over limit", "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\n\r\n0\r\nX: " + strings.Repeat("t", 1100) + "\r\n\r\n", 431, true, ""},
	{"expect 100 over limit", "POST / HTTP/1.1\r\n" + host + "Expect: 100-continue\r\nContent-Length: 65\r\n\r\n", 413, true, ""},
}

func testServer() *Server {
	return &Server{Handler: echoHandler, MaxHeaderBytes: 1024, MaxBodyBytes: 64}
}

// firstResponse feeds req in the pieces given and returns the status of the
// first final response, the whole normalized output, and whether the
// connection closed.
func runPieces(t testing.TB, pieces ...string) (out string, closed bool) {
	out, closed, _ = runPiecesLinger(t, pieces...)
	return out, closed
}

// runPiecesLinger is runPieces that also tells whether the close skipped
// the linger.
func runPiecesLinger(t testing.TB, pieces ...string) (out string, closed, noLinger bool) {
	h := newHarness(t, testServer())
	for _, p := range pieces {
		h.feedString(p)
	}
	return h.output(), h.closed(), h.closedNoLinger()
}

func TestFraming(t *testing.T) {
	for _, tc := range framingCases {
		t.Run(tc.name, func(t *testing.T) {
			out, closed, noLinger := runPiecesLinger(t, tc.req)
			// Only a request read whole that asked for the close spares
			// the linger; after an error the client may still be sending.
			if wantNoLinger := closed && tc.status < 400; noLinger != wantNoLinger {
				t.Fatalf("closed without linger = %v, want %v", noLinger, wantNoLinger)
			}
			method := strings.SplitN(strings.TrimLeft(tc.req, "\r\n"), " ", 2)[0]
			res := parseResponses(t, out, method)
			if len(res) != 1 {
				t.Fatalf("got %d responses, want 1: %q", len(res), out)
			}
			if res[0].code != tc.status {
				t.Fatalf("status %d, want %d: %q", res[0].code, tc.status, out)
			}
			if closed != tc.close {
				t.Fatalf("closed = %v, want %v: %q", closed, tc.close, out)
			}
			if tc.body != "" && res[0].body != tc.body {
				t.Fatalf("body %q, want %q", res[0].body, tc.body)
			}
			if tc.close && tc.status != 200 && !res[0].close {
				t.Fatalf("error response without Connection: close: %q", out)
			}
			// The same answer however the request is split.
			want := normalize(out)
			for i := 1; i < len(tc.req); i++ {
				got, gotClosed := runPieces(t, tc.req[:i], tc.req[i:])
				if normalize(got) != want || gotClosed != closed {
					t.Fatalf("split at %d: got %q (closed %v), want %q", i, got, gotClosed, want)
				}
			}
			got, gotClosed := runPieces(t, strings.Split(tc.req, "")...)
			if normalize(got) != want || gotClosed != closed {
				t.Fatalf("byte by byte: got %q (closed %v), want %q", got, gotClosed, want)
			}
		})
	}
}

// After an error, nothing the client sent behind the bad request is
// answered.
func TestErrorStopsReading(t *testing.T) {
	h := newHarness(t, testServer())
	h.feedString("GET / HTTP/1.1\r\n" + host + "\r\nGET / HTTP/1.1\r\nHost : a\r\n\r\nGET / HTTP/1.1\r\n" + host + "\r\n")
	res := parseResponses(t, h.output(), "GET", "GET")
	if len(res) != 2 || res[0].code != 200 || res[1].code != 400 || !h.closed() {
		t.Fatalf("got %+v closed=%v", res, h.closed())
	}
	h.feedString("GET / HTTP/1.1\r\n" + host + "\r\n")
	if n := len(parseResponses(t, h.output())); n != 2 {
		t.Fatalf("%d responses after close", n)
	}
}

func TestPipelining(t *testing.T) {
	var reqs strings.Builder
	for i := 0; i < 10; i++ {
		if i%3 == 1 {
			fmt.Fprintf(&reqs, "POST /%d HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", i)
		} else {
			fmt.Fprintf(&reqs, "GET /%d HTTP/1.1\r\nHost: a\r\n\r\n", i)
		}
	}
	all := reqs.String()
	check := func(out string) {
		t.Helper()
		res := parseResponses(t, out)
		if len(res) != 10 {
			t.Fatalf("got %d responses: %q", len(res), out)
		}
		for i, r := range res {
			wantM, wantB := "GET", ""
			if i%3 == 1 {
				wantM, wantB = "POST", "abc"
			}
			want := fmt.Sprintf("m=%s p=/%d q= b=%s", wantM, i, wantB)
			if r.body != want {
				t.Fatalf("response %d: %q, want %q", i, r.body, want)
			}
		}
	}
	out, closed := runPieces(t, all)
	if closed {
		t.Fatal("closed")
	}
	check(out)
	want := normalize(out)
	// Every split into two reads, and byte by byte.
	for i := 1; i < len(all); i += 7 {
		got, _ := runPieces(t, all[:i], all[i:])
		if normalize(got) != want {
			t.Fatalf("split at %d differs", i)
		}
	}
	got, _ := runPieces(t, strings.Split(all, "")...)
	if normalize(got) != want {
		t.Fatal("byte by byte differs")
	}
}

// The responses to the requests of one read go out in one write, also
// when together they outgrow the batch's first buffer (16 responses of
// 1,000 bytes made 8 writes once large bodies were written apart; found by
// review).
func TestPipelinedOneWrite(t *testing.T) {
	kilo := strings.Repeat("b", 1000)
	for _, s := range []*Server{testServer(), {Handler: func(w *ResponseWriter, r *Request) { w.WriteString(kilo) }}} {
		h := newHarness(t, s)
		h.feedString(strings.Repeat("GET / HTTP/1.1\r\n"+host+"\r\n", 16))
		if res := parseResponses(t, h.output()); len(res) != 16 {
			t.Fatalf("%d responses", len(res))
		}
		if h.f.sends != 1 {
			t.Errorf("%d writes for one read of 16 requests (%d bytes)", h.f.sends, len(h.output()))
		}
	}
}

// The parser does not rescan a slow header from its start on every byte.
func TestNoRescan(t *testing.T) {
	h := newHarness(t, testServer())
	req := "GET / HTTP/1.1\r\n" + host + "X: " + strings.Repeat("a", 900) + "\r\n\r\n"
	for i := 0; i < len(req)-1; i++ {
		h.feedString(req[i : i+1])
		if i > 20 && h.cs.p.scan != i+1 {
			t.Fatalf("after %d bytes, scan = %d", i+1, h.cs.p.scan)
		}
	}
	h.feedString(req[len(req)-1:])
	if res := parseResponses(t, h.output()); len(res) != 1 || res[0].code != 200 {
		t.Fatalf("%+v", res)
	}
}

// A huge Content-Length is answered before anything is allocated for it.
func TestAbsurdContentLengthNoAlloc(t *testing.T) {
	s := &Server{Handler: echoHandler}
	h := newHarness(t, s)
	h.feedString("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 8000000000\r\n\r\n")
	res := parseResponses(t, h.output())
	if len(res) != 1 || res[0].code != 413 || !h.closed() {
		t.Fatalf("%+v", res)
	}
	if cap(h.cs.in) > 0 {
		t.Fatalf("kept %d bytes", cap(h.cs.in))
	}
	// A body within the limit but not there yet: the buffer holds only
	// what arrived.
	h = newHarness(t, s)
	h.feedString("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 8000000\r\n\r\nabc")
	if c := cap(h.cs.in); c > 64<<10 {
		t.Fatalf("buffer of %d bytes for 3 bytes of body", c)
	}
}
