package interop

import (
	"bytes"
	"errors"
	"math/rand"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// TestGorillaEcho talks to examples/websocket's /echo endpoint with
// gorilla/websocket, with and without permessage-deflate.
func TestGorillaEcho(t *testing.T) {
	addr := startExample(t, "websocket")
	for _, compress := range []bool{false, true} {
		name := "plain"
		if compress {
			name = "deflate"
		}
		t.Run(name, func(t *testing.T) {
			d := websocket.Dialer{EnableCompression: compress, WriteBufferSize: 1024, HandshakeTimeout: 5 * time.Second}
			c, resp, err := d.Dial("ws://"+addr+"/echo", nil)
			if err != nil {
				t.Fatalf("dial: %v", err)
			}
			defer c.Close()
			ext := resp.Header.Get("Sec-WebSocket-Extensions")
			if compress != strings.Contains(ext, "permessage-deflate") {
				t.Fatalf("compression asked %v, server answered extensions %q", compress, ext)
			}
			c.SetReadDeadline(time.Now().Add(20 * time.Second))
			rng := rand.New(rand.NewSource(1))

			t.Run("text and binary", func(t *testing.T) {
				for _, m := range []struct {
					typ  int
					data []byte
				}{{websocket.TextMessage, []byte("hello, herd")}, {websocket.BinaryMessage, []byte{0, 1, 2, 0xff}}, {websocket.TextMessage, []byte("")}} {
					if err := c.WriteMessage(m.typ, m.data); err != nil {
						t.Fatal(err)
					}
					typ, got, err := c.ReadMessage()
					if err != nil || typ != m.typ || !bytes.Equal(got, m.data) {
						t.Fatalf("echo of %q: type %d %q %v", m.data, typ, got, err)
					}
				}
			})

			t.Run("1 MiB", func(t *testing.T) {
				big := make([]byte, 1<<20)
				rng.Read(big)
				if err := c.WriteMessage(websocket.BinaryMessage, big); err != nil {
					t.Fatal(err)
				}
				_, got, err := c.ReadMessage()
				if err != nil || !bytes.Equal(got, big) {
					t.Fatalf("1 MiB echo: %d bytes, equal=%v, err %v", len(got), bytes.Equal(got, big), err)
				}
			})

			t.Run("fragments with pings between", func(t *testing.T) {
				var pongs atomic.Int32
				c.SetPongHandler(func(string) error { pongs.Add(1); return nil })
				w, err := c.NextWriter(websocket.TextMessage)
				if err != nil {
					t.Fatal(err)
				}
				var sent []byte
				for i := 0; i < 20; i++ {
					part := bytes.Repeat([]byte{'a' + byte(i)}, 700) // > WriteBufferSize: gorilla sends a frame per buffer
					sent = append(sent, part...)
					if _, err := w.Write(part); err != nil {
						t.Fatal(err)
					}
					if err := c.WriteControl(websocket.PingMessage, []byte("p"), time.Now().Add(time.Second)); err != nil {
						t.Fatal(err)
					}
				}
				if err := w.Close(); err != nil {
					t.Fatal(err)
				}
				_, got, err := c.ReadMessage() // pongs are handled while reading
				if err != nil || !bytes.Equal(got, sent) {
					t.Fatalf("fragmented echo: %d of %d bytes, err %v", len(got), len(sent), err)
				}
				if pongs.Load() == 0 {
					t.Error("no pong for 20 pings")
				}
			})

			t.Run("close code echoed", func(t *testing.T) {
				msg := websocket.FormatCloseMessage(4000, "bye")
				if err := c.WriteControl(websocket.CloseMessage, msg, time.Now().Add(time.Second)); err != nil {
					t.Fatal(err)
				}
				_, _, err := c.ReadMessage()
				var ce *websocket.CloseError
				if !errors.As(err, &ce) || ce.Code != 4000 {
					t.Fatalf("after close 4000: %v", err)
				}
			})
		})
	}
}

// TestGorillaProtocolErrors checks the close codes examples/websocket sends
// for bad input from a real client.
func TestGorillaProtocolErrors(t *testing.T) {
	addr := startExample(t, "websocket")
	for _, tc := range []struct {
		name string
		send func(c *websocket.Conn) error
		code int
	}{
		{"invalid UTF-8 text", func(c *websocket.Conn) error { return c.WriteMessage(websocket.TextMessage, []byte{'o', 'k', 0xff}) }, websocket.CloseInvalidFramePayloadData},
		{"invalid close code", func(c *websocket.Conn) error {
			return c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(1004, "reserved"), time.Now().Add(time.Second))
		}, websocket.CloseProtocolError},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, _, err := websocket.DefaultDialer.Dial("ws://"+addr+"/echo", nil)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			if err := tc.send(c); err != nil {
				t.Fatal(err)
			}
			_, _, err = c.ReadMessage()
			var ce *websocket.CloseError
			if !errors.As(err, &ce) || ce.Code != tc.code {
				t.Fatalf("got %v, want close %d", err, tc.code)
			}
		})
	}
}

// TestGorillaServerPing checks that the server pings an idle client (the
// example runs with -ping 200ms here) and that gorilla's pongs keep the
// connection open.
func TestGorillaServerPing(t *testing.T) {
	addr := startExample(t, "websocket", "-ping", "200ms")
	c, _, err := websocket.DefaultDialer.Dial("ws://"+addr+"/echo", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var pings atomic.Int32
	c.SetPingHandler(func(data string) error {
		pings.Add(1)
		return c.WriteControl(websocket.PongMessage, []byte(data), time.Now().Add(time.Second))
	})
	go func() {
		for {
			if _, _, err := c.ReadMessage(); err != nil {
				return
			}
		}
	}()
	deadline := time.Now().Add(10 * time.Second)
	for pings.Load() < 3 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if n := pings.Load(); n < 3 {
		t.Fatalf("%d server pings in 10s, want at least 3", n)
	}
	c.SetWriteDeadline(time.Now().Add(2 * time.Second))
	if err := c.WriteMessage(websocket.TextMessage, []byte("still open")); err != nil {
		t.Fatalf("connection closed despite pongs: %v", err)
	}
}
