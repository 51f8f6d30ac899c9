package websocket

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"net"
	nethttp "net/http"
	"strings"
	"testing"
	"time"

	"github.com/seed358e4494/herd"
	"github.com/seed358e4494/herd/internal/herdtest"
	herdhttp "github.com/seed358e4494/herd/protocol/http"
)

const sampleKey = "dGhlIHNhbXBsZSBub25jZQ==" // RFC 6455's example

// serve runs a worker with handler on loopback until the test ends.
func serve(t *testing.T, h herdhttp.Handler) string {
	t.Helper()
	w := &herd.Worker{Addr: "tcp://127.0.0.1:0", Count: 2, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	if err := (&herdhttp.Server{Handler: h}).Attach(w); err != nil {
		t.Fatal(err)
	}
	return herdtest.Run(t, w)
}

// serveWS serves s on every path.
func serveWS(t *testing.T, s *Server) string {
	return serve(t, func(w *herdhttp.ResponseWriter, r *herdhttp.Request) { s.Upgrade(w, r) })
}

// wsClient is the smallest client that does the job: a handshake, masked
// frames out, frames in.
type wsClient struct {
	t    *testing.T
	conn net.Conn
	br   *bufio.Reader
	resp *nethttp.Response
}

func rawRequest(t *testing.T, addr, req string) (*wsClient, *nethttp.Response) {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err == nil {
		conn, err = herdtest.Client(conn) // over TLS when the tests run over TLS
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(conn, req); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(conn)
	resp, err := nethttp.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	return &wsClient{t: t, conn: conn, br: br, resp: resp}, resp
}

func handshake(addr, extra string) string {
	return "GET /ws HTTP/1.1\r\nHost: " + addr + "\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n" +
		"Sec-WebSocket-Key: " + sampleKey + "\r\nSec-WebSocket-Version: 13\r\n" + extra + "\r\n"
}

func dial(t *testing.T, addr, extra string) *wsClient {
	t.Helper()
	c, resp := rawRequest(t, addr, handshake(addr, extra))
	if resp.StatusCode != 101 || resp.Header.Get("Sec-WebSocket-Accept") != "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" {
		t.Fatalf("handshake: %s %v", resp.Status, resp.Header)
	}
	return c
}

func (c *wsClient) send(frames ...[]byte) {
	c.t.Helper()
	if _, err := c.conn.Write(cat(frames...)); err != nil {
		c.t.Fatal(err)
	}
}

func (c *wsClient) read() serverFrame {
	c.t.Helper()
	f, err := readServerFrame(c.br)
	if err != nil {
		c.t.Fatal(err)
	}
	return f
}

// expectEOF waits for the server to close the TCP connection, then closes
// the client's side as a client does (herd waits for it before it calls
// OnClose).
func (c *wsClient) expectEOF() {
	c.t.Helper()
	if n, err := io.Copy(io.Discard, c.br); err != nil || n != 0 {
		c.t.Fatalf("want EOF, got %d bytes, %v", n, err)
	}
	c.conn.Close()
}

type closeEvent struct {
	code   StatusCode
	reason string
}

func echoServer() (*Server, chan closeEvent) {
	closed := make(chan closeEvent, 16)
	s := &Server{
		OnMessage: func(c *Conn, op OpCode, data []byte) { c.WriteMessage(op, data) },
		OnClose:   func(c *Conn, code StatusCode, reason string) { closed <- closeEvent{code, reason} },
	}
	return s, closed
}

func waitClose(t *testing.T, ch chan closeEvent) closeEvent {
	t.Helper()
	select {
	case e := <-ch:
		return e
	case <-time.After(5 * time.Second):
		t.Fatal("OnClose did not run")
	}
	return closeEvent{}
}

func TestEndToEndEcho(t *testing.T) {
	s, closed := echoServer()
	addr := serveWS(t, s)
	c := dial(t, addr, "")
	big := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB
	var frags [][]byte
	for off := 0; off < len(big); off += 100000 {
		end := min(off+100000, len(big))
		op := OpContinuation
		if off == 0 {
			op = OpBinary
		}
		frags = append(frags, clientFrame(end == len(big), 0, op, big[off:end]))
	}
	c.send(text("hello"), clientFrame(true, 0, OpBinary, []byte{1, 2, 3}), clientFrame(true, 0, OpPing, []byte("ping!")))
	c.send(frags...)
	c.send(clientFrame(true, 0, OpText, big))
	for _, want := range []serverFrame{
		{true, false, OpText, []byte("hello")},
		{true, false, OpBinary, []byte{1, 2, 3}},
		{true, false, OpPong, []byte("ping!")},
		{true, false, OpBinary, big},
		{true, false, OpText, big},
	} {
		if got := c.read(); got.op != want.op || !bytes.Equal(got.payload, want.payload) {
			t.Fatalf("got %v %d bytes, want %v %d bytes", got.op, len(got.payload), want.op, len(want.payload))
		}
	}
	c.send(closeFrameFor(StatusNormalClosure, "done"))
	if f := c.read(); closeCodeOf(f) != 1000 {
		t.Fatalf("close answer %v", f)
	}
	c.expectEOF()
	if e := waitClose(t, closed); e != (closeEvent{1000, "done"}) {
		t.Fatalf("OnClose %+v", e)
	}
}

// Bytes that arrive right behind the handshake request reach the parser.
func TestEndToEndFramesBehindRequest(t *testing.T) {
	s, _ := echoServer()
	addr := serveWS(t, s)
	c, resp := rawRequest(t, addr, handshake(addr, "")+string(text("early")))
	if resp.StatusCode != 101 {
		t.Fatal(resp.Status)
	}
	if f := c.read(); string(f.payload) != "early" {
		t.Fatalf("%v", f)
	}
}

func TestEndToEndProtocolError(t *testing.T) {
	s, closed := echoServer()
	addr := serveWS(t, s)
	c := dial(t, addr, "")
	c.send([]byte{0x81, 0x02, 'h', 'i'}) // unmasked
	if f := c.read(); closeCodeOf(f) != StatusProtocolError {
		t.Fatalf("%v", f)
	}
	c.expectEOF()
	if e := waitClose(t, closed); e.code != StatusProtocolError {
		t.Fatalf("OnClose %+v", e)
	}
}

func TestEndToEndCompression(t *testing.T) {
	for _, noCtx := range []bool{false, true} {
		s, _ := echoServer()
		s.Compression, s.NoContextTakeover = true, noCtx
		addr := serveWS(t, s)
		c := dial(t, addr, "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n")
		ext := c.resp.Header.Get("Sec-WebSocket-Extensions")
		if !strings.HasPrefix(ext, "permessage-deflate") || strings.Contains(ext, "no_context") != noCtx {
			t.Fatalf("extensions %q", ext)
		}
		cd := &clientDeflater{takeover: !noCtx}
		ci := &clientInflater{takeover: !noCtx}
		for i := 0; i < 5; i++ {
			msg := []byte(strings.Repeat(fmt.Sprintf("message %d compresses well. ", i), 20))
			c.send(clientFrame(true, rsv1Bit, OpText, cd.compress(msg)))
			f := c.read()
			if !f.rsv1 {
				t.Fatal("reply not compressed")
			}
			got, err := ci.inflate(f.payload)
			if err != nil || !bytes.Equal(got, msg) {
				t.Fatalf("reply %q, %v", got, err)
			}
		}
	}
}

func TestEndToEndServerClose(t *testing.T) {
	closed := make(chan closeEvent, 1)
	s := &Server{
		CloseTimeout: 100 * time.Millisecond,
		OnOpen: func(c *Conn, r *herdhttp.Request) {
			c.WriteText([]byte("welcome"))
			c.Close(StatusGoingAway, "bye")
		},
		OnClose: func(c *Conn, code StatusCode, reason string) { closed <- closeEvent{code, reason} },
	}
	addr := serveWS(t, s)
	// A peer that answers the close.
	c := dial(t, addr, "")
	if f := c.read(); string(f.payload) != "welcome" {
		t.Fatalf("%v", f)
	}
	if f := c.read(); closeCodeOf(f) != StatusGoingAway {
		t.Fatalf("%v", f)
	}
	c.send(closeFrameFor(StatusGoingAway, ""))
	c.expectEOF()
	if e := waitClose(t, closed); e.code != StatusGoingAway {
		t.Fatalf("%+v", e)
	}
	// A peer that does not: closed after CloseTimeout, OnClose gets 1006.
	c = dial(t, addr, "")
	c.read()
	c.read()
	start := time.Now()
	c.expectEOF()
	if e := waitClose(t, closed); e.code != StatusAbnormalClosure || time.Since(start) > 3*time.Second {
		t.Fatalf("%+v after %v", e, time.Since(start))
	}
}

func TestEndToEndKeepalive(t *testing.T) {
	s, closed := echoServer()
	s.PingInterval, s.PongTimeout = 20*time.Millisecond, 150*time.Millisecond
	addr := serveWS(t, s)
	// A silent peer is pinged, then dropped.
	c := dial(t, addr, "")
	if f := c.read(); f.op != OpPing {
		t.Fatalf("%v", f)
	}
	for {
		f, err := readServerFrame(c.br)
		if err == io.EOF {
			break
		}
		if err != nil || f.op != OpPing {
			t.Fatalf("%v %v", f, err)
		}
	}
	if e := waitClose(t, closed); e.code != StatusAbnormalClosure {
		t.Fatalf("%+v", e)
	}
	// A peer that answers stays.
	c = dial(t, addr, "")
	deadline := time.Now().Add(500 * time.Millisecond)
	for time.Now().Before(deadline) {
		if f := c.read(); f.op == OpPing {
			c.send(clientFrame(true, 0, OpPong, f.payload))
		}
	}
	c.send(text("still here"))
	for {
		if f := c.read(); f.op == OpText {
			break
		}
	}
}

func TestHandshake(t *testing.T) {
	s := &Server{Subprotocols: []string{"chat.v2", "chat.v1"}}
	addr := serve(t, func(w *herdhttp.ResponseWriter, r *herdhttp.Request) {
		if string(r.Path()) != "/ws" {
			herdhttp.Error(w, 404)
			return
		}
		s.Upgrade(w, r)
	})
	good := handshake(addr, "")
	replace := func(old, new string) string { return strings.Replace(good, old, new, 1) }
	cases := []struct {
		name   string
		req    string
		status int
		header string // a response header that must be there, "Name: value"
	}{
		{"ok", good, 101, "Upgrade: websocket"},
		{"other route", replace("GET /ws", "GET /other"), 404, ""},
		{"POST", replace("GET", "POST") + "", 405, "Allow: GET"},
		{"HTTP/1.0", replace("HTTP/1.1", "HTTP/1.0"), 400, ""},
		{"no Upgrade", replace("Upgrade: websocket\r\n", ""), 426, "Upgrade: websocket"},
		{"Upgrade: h2c", replace("Upgrade: websocket", "Upgrade: h2c"), 426, ""},
		{"upgrade token case", replace("Upgrade: websocket", "Upgrade: WebSocket"), 101, ""},
		{"no Connection upgrade", replace("Connection: keep-alive, Upgrade", "Connection: keep-alive"), 400, ""},
		{"version 8", replace("Version: 13", "Version: 8"), 426, "Sec-Websocket-Version: 13"},
		{"no version", replace("Sec-WebSocket-Version: 13\r\n", ""), 426, "Sec-Websocket-Version: 13"},
		{"no key", replace("Sec-WebSocket-Key: "+sampleKey+"\r\n", ""), 400, ""},
		{"short key", replace(sampleKey, "dGhlIHNhbXBsZQ=="), 400, ""},
		{"key not base64", replace(sampleKey, "!GhlIHNhbXBsZSBub25jZQ=="), 400, ""},
		{"two keys", replace("Sec-WebSocket-Version", "Sec-WebSocket-Key: "+sampleKey+"\r\nSec-WebSocket-Version"), 400, ""},
		{"same origin", replace("Upgrade: websocket", "Origin: http://"+addr+"\r\nUpgrade: websocket"), 101, ""},
		{"cross origin", replace("Upgrade: websocket", "Origin: http://evil.example\r\nUpgrade: websocket"), 403, ""},
		{"subprotocol", replace("Upgrade: websocket", "Sec-WebSocket-Protocol: chat.v1, chat.v2\r\nUpgrade: websocket"), 101, "Sec-Websocket-Protocol: chat.v2"},
		{"compression off", replace("Upgrade: websocket", "Sec-WebSocket-Extensions: permessage-deflate\r\nUpgrade: websocket"), 101, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, resp := rawRequest(t, addr, tc.req)
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d", resp.StatusCode, tc.status)
			}
			if name, value, ok := strings.Cut(tc.header, ": "); ok && resp.Header.Get(name) != value {
				t.Fatalf("%s: %q, want %q (%v)", name, resp.Header.Get(name), value, resp.Header)
			}
			if tc.status == 101 && resp.Header.Get("Sec-WebSocket-Extensions") != "" {
				t.Fatal("extension accepted with Compression off")
			}
		})
	}
	// A custom origin check.
	s2 := &Server{CheckOrigin: func(r *herdhttp.Request) bool { return string(r.Header("Origin")) == "https://ok.example" }}
	addr2 := serveWS(t, s2)
	for origin, status := range map[string]int{"https://ok.example": 101, "https://no.example": 403} {
		_, resp := rawRequest(t, addr2, handshake(addr2, "Origin: "+origin+"\r\n"))
		if resp.StatusCode != status {
			t.Errorf("origin %s: %d", origin, resp.StatusCode)
		}
	}
}

func TestEndToEndBroadcast(t *testing.T) {
	joined := make(chan *Conn, 4)
	s := &Server{OnOpen: func(c *Conn, r *herdhttp.Request) { joined <- c }}
	addr := serveWS(t, s)
	var clients []*wsClient
	var conns []*Conn
	for i := 0; i < 4; i++ {
		clients = append(clients, dial(t, addr, ""))
		conns = append(conns, <-joined)
	}
	if n, err := Broadcast(conns, OpText, []byte("to everyone")); n != 4 || err != nil {
		t.Fatal(n, err)
	}
	for _, c := range clients {
		if f := c.read(); string(f.payload) != "to everyone" {
			t.Fatalf("%v", f)
		}
	}
}
