package websocket

import (
	"bufio"
	"github.com/seed358e4494/herd/internal/herdtest"
	"io"
	"net"
	nethttp "net/http"
	"testing"
	"time"

	herdhttp "github.com/seed358e4494/herd/protocol/http"
)

// Frames written in OnOpen wait for the 101, which waits for the response
// to an earlier pipelined request still open: the client sees that
// response, then the 101, then the frame.
func TestFramesWaitFor101BehindAsync(t *testing.T) {
	ws := &Server{OnOpen: func(c *Conn, r *herdhttp.Request) { c.WriteText([]byte("hello")) }}
	addr := serve(t, func(w *herdhttp.ResponseWriter, r *herdhttp.Request) {
		if string(r.Path()) == "/slow" {
			w.Async()
			go func() {
				time.Sleep(100 * time.Millisecond)
				w.Write([]byte("slow"))
				w.End()
			}()
			return
		}
		ws.Upgrade(w, r)
	})
	conn, err := net.Dial("tcp", addr)
	if err == nil {
		conn, err = herdtest.Client(conn)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(conn, "GET /slow HTTP/1.1\r\nHost: "+addr+"\r\n\r\n"+handshake(addr, ""))
	br := bufio.NewReader(conn)
	resp, err := nethttp.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 || string(body) != "slow" {
		t.Fatalf("first response: %d %q %v", resp.StatusCode, body, err)
	}
	resp, err = nethttp.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != 101 {
		t.Fatalf("second response: %v %v", resp, err)
	}
	f, err := readServerFrame(br)
	if err != nil || f.op != OpText || string(f.payload) != "hello" {
		t.Fatalf("frame %+v %v", f, err)
	}
}
