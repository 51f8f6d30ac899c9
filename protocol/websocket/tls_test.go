package websocket

import (
	"bufio"
	"crypto/tls"
	"io"
	"log/slog"
	"net"
	nethttp "net/http"
	"testing"
	"time"

	"github.com/seed358e4494/herd"
	"github.com/seed358e4494/herd/internal/herdtest"
	herdhttp "github.com/seed358e4494/herd/protocol/http"
)

// TestWSS: WebSocket over TLS (wss): the handshake, echoes (one of 200
// KiB, over many TLS records), a server ping answered, and a clean close.
func TestWSS(t *testing.T) {
	srvCfg, cliCfg := herdtest.TLSConfigs(t)
	s, closed := echoServer()
	w := &herd.Worker{Addr: "tcp://127.0.0.1:0", Count: 2, TLS: srvCfg, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	if err := (&herdhttp.Server{Handler: func(rw *herdhttp.ResponseWriter, r *herdhttp.Request) { s.Upgrade(rw, r) }}).Attach(w); err != nil {
		t.Fatal(err)
	}
	addr := herdtest.Run(t, w)
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, cliCfg)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(20 * time.Second))
	io.WriteString(conn, handshake(addr, ""))
	br := bufio.NewReader(conn)
	resp, err := nethttp.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != 101 {
		t.Fatalf("handshake: %v %v", resp, err)
	}
	c := &wsClient{t: t, conn: conn, br: br, resp: resp}
	c.send(text("hello over TLS"))
	if f := c.read(); f.op != OpText || string(f.payload) != "hello over TLS" {
		t.Fatalf("%+v", f)
	}
	big := make([]byte, 200<<10)
	for i := range big {
		big[i] = 'a' + byte(i%26)
	}
	c.send(clientFrame(true, 0, OpBinary, big))
	if f := c.read(); f.op != OpBinary || string(f.payload) != string(big) {
		t.Fatalf("200 KiB echo: op %v, %d bytes", f.op, len(f.payload))
	}
	c.send(closeFrameFor(StatusNormalClosure, "bye"))
	if f := c.read(); closeCodeOf(f) != StatusNormalClosure {
		t.Fatalf("close reply %+v", f)
	}
	c.expectEOF()
	if e := waitClose(t, closed); e.code != StatusNormalClosure {
		t.Errorf("OnClose %+v", e)
	}
}
