package websocket_test

import (
	"bufio"
	"context"
	"fmt"
	"log"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/seed358e4494/herd"
	herdhttp "github.com/seed358e4494/herd/protocol/http"
	"github.com/seed358e4494/herd/protocol/websocket"
)

// An echo server, and a client written by hand to show the wire.
func Example() {
	s := &websocket.Server{
		OnMessage: func(c *websocket.Conn, op websocket.OpCode, data []byte) {
			c.WriteMessage(op, data) // data is valid only during the call: WriteMessage does not keep it
		},
	}
	w := &herd.Worker{Addr: "tcp://127.0.0.1:0", Count: 1}
	if err := s.Attach(w); err != nil {
		log.Fatal(err)
	}
	w.Listen()
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	go w.Run(ctx)

	conn, _ := net.Dial("tcp", w.ListenAddr().String())
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprint(conn, "GET / HTTP/1.1\r\nHost: example\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
	br := bufio.NewReader(conn)
	resp, _ := http.ReadResponse(br, nil)
	fmt.Println(resp.Status, resp.Header.Get("Sec-WebSocket-Accept"))

	// A masked text frame "hello" (mask key 0, so the payload reads as is).
	conn.Write([]byte{0x81, 0x85, 0, 0, 0, 0, 'h', 'e', 'l', 'l', 'o'})
	frame := make([]byte, 7)
	br.Read(frame)
	fmt.Printf("%#x %q\n", frame[0], frame[2:])
	// Output:
	// 101 Switching Protocols s3pPLMBiTxaQ9kYGzzhZRbK+xOo=
	// 0x81 "hello"
}

func ExampleAcceptKey() {
	fmt.Println(websocket.AcceptKey("dGhlIHNhbXBsZSBub25jZQ=="))
	// Output: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=
}

// WebSocket on one route of an HTTP server, with compression and
// keepalive, and a broadcast to every connection of a room. The room is
// touched from the callbacks of several loops, so it has a lock; Broadcast
// encodes each message once.
func ExampleServer_Upgrade() {
	var mu sync.Mutex
	room := map[*websocket.Conn]bool{}
	ws := &websocket.Server{
		Compression:  true,
		PingInterval: 30 * time.Second,
		PongTimeout:  75 * time.Second,
		OnOpen: func(c *websocket.Conn, r *herdhttp.Request) {
			mu.Lock()
			room[c] = true
			mu.Unlock()
		},
		OnMessage: func(c *websocket.Conn, op websocket.OpCode, data []byte) {
			mu.Lock()
			all := make([]*websocket.Conn, 0, len(room))
			for c := range room {
				all = append(all, c)
			}
			mu.Unlock()
			websocket.Broadcast(all, op, data)
		},
		OnClose: func(c *websocket.Conn, code websocket.StatusCode, reason string) {
			mu.Lock()
			delete(room, c)
			mu.Unlock()
		},
	}
	hs := &herdhttp.Server{Handler: func(w *herdhttp.ResponseWriter, r *herdhttp.Request) {
		if string(r.Path()) == "/chat" {
			ws.Upgrade(w, r)
			return
		}
		w.Write([]byte("hello over HTTP\n"))
	}}
	w := &herd.Worker{Addr: "tcp://127.0.0.1:0", Accept: herd.AcceptLeastConns}
	if err := hs.Attach(w); err != nil {
		log.Fatal(err)
	}
	// log.Fatal(w.Run(context.Background()))
}
