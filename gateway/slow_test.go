//go:build linux

package gateway

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/seed358e4494/herd"
	"github.com/seed358e4494/herd/internal/herdtest"
	"github.com/seed358e4494/herd/protocol"
	herdhttp "github.com/seed358e4494/herd/protocol/http"
	"github.com/seed358e4494/herd/protocol/websocket"
)

// slowPeer is a client of the slow-consumer tests: it reads only when
// told to, through a 4 KiB receive buffer, so that what the server pushes
// piles up in its send queue.
type slowPeer struct {
	conn net.Conn
	br   *bufio.Reader
	ws   bool
}

func dialSmall(t *testing.T, addr string) net.Conn {
	d := net.Dialer{Timeout: 5 * time.Second, Control: func(_, _ string, rc syscall.RawConn) error {
		return rc.Control(func(fd uintptr) { syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
	}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func dialPeer(t *testing.T, addr string, ws bool) *slowPeer {
	p := &slowPeer{conn: dialSmall(t, addr), ws: ws}
	p.br = bufio.NewReader(p.conn)
	if ws {
		fmt.Fprint(p.conn, "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
			"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
		p.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		for {
			l, err := p.br.ReadString('\n')
			if err != nil {
				t.Fatal(err)
			}
			if l == "\r\n" {
				break
			}
		}
		p.conn.SetReadDeadline(time.Time{})
	}
	return p
}

// read returns the next message, or the close code the server sent
// (WebSocket; 0 with io.EOF for a Raw client) and the error that ended
// the stream.
func (p *slowPeer) read() (msg string, code int, err error) {
	p.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	if !p.ws {
		l, err := p.br.ReadString('\n')
		return strings.TrimSuffix(l, "\n"), 0, err
	}
	var h [2]byte
	if _, err := io.ReadFull(p.br, h[:]); err != nil {
		return "", 0, err
	}
	n := int(h[1] & 0x7f)
	switch n {
	case 126:
		var b [2]byte
		if _, err := io.ReadFull(p.br, b[:]); err != nil {
			return "", 0, err
		}
		n = int(binary.BigEndian.Uint16(b[:]))
	case 127:
		var b [8]byte
		if _, err := io.ReadFull(p.br, b[:]); err != nil {
			return "", 0, err
		}
		n = int(binary.BigEndian.Uint64(b[:]))
	}
	payload := make([]byte, n)
	if _, err := io.ReadFull(p.br, payload); err != nil {
		return "", 0, err
	}
	if h[0]&0x0f == 0x8 { // close
		return "", int(binary.BigEndian.Uint16(payload)), io.EOF
	}
	return string(payload), 0, nil
}

// TestSlowConsumer: one client reads, one does not, in a room that gets
// 3,000 messages of 4 KiB (12 MB: more than the kernel buffers on
// loopback, 4 MB send and the 4 KiB receive buffer the client asks). The reader gets all of them, in order, under
// either policy. SlowDrop: the stalled client stays connected and, once it
// reads, gets exactly the messages not counted in Stats.SlowDropped, in
// order, then what is sent after. SlowClose: it gets a gapless prefix,
// then the close (1008 "slow consumer" for WebSocket, counted by the
// server; EOF for Raw, counted in Stats.SlowClosed), and nothing is
// counted dropped.
func TestSlowConsumer(t *testing.T) {
	const n, size, bound = 3000, 4096, 64 << 10
	for _, ws := range []bool{true, false} {
		for _, policy := range []SlowPolicy{SlowDrop, SlowClose} {
			name := map[bool]string{true: "websocket", false: "raw"}[ws] + "/" + map[SlowPolicy]string{SlowDrop: "drop", SlowClose: "close"}[policy]
			t.Run(name, func(t *testing.T) {
				g := &Gateway{Node: "a", SlowConsumer: policy, MaxQueuedBytes: bound}
				w := &herd.Worker{Addr: "tcp://127.0.0.1:0", Count: 1, Logger: slog.New(slog.DiscardHandler)}
				ids := make(chan ClientID, 2)
				conns := make(chan *herd.Conn, 2)
				srv := &websocket.Server{MaxQueuedBytes: 4 * bound}
				if policy == SlowClose {
					srv.MaxQueuedBytes = bound
				}
				if ws {
					srv.OnOpen = func(c *websocket.Conn, _ *herdhttp.Request) {
						id := g.Add(WebSocket(c))
						c.SetContext(id)
						g.JoinGroup(id, "room")
						ids <- id
						conns <- c.Herd()
					}
					srv.OnClose = func(c *websocket.Conn, _ websocket.StatusCode, _ string) { g.Remove(c.Context().(ClientID)) }
					if err := srv.Attach(w); err != nil {
						t.Fatal(err)
					}
				} else {
					w.Addr = "text://127.0.0.1:0"
					w.OnConnect = func(c *herd.Conn) {
						id := g.Add(Raw(c, protocol.Text{}))
						c.SetContext(id)
						g.JoinGroup(id, "room")
						ids <- id
						conns <- c
					}
					w.OnClose = func(c *herd.Conn) { g.Remove(c.Context().(ClientID)) }
				}
				if err := g.Attach(w); err != nil {
					t.Fatal(err)
				}
				addr := herdtest.Run(t, w)
				reader := dialPeer(t, addr, ws)
				<-ids
				stalled := dialPeer(t, addr, ws)
				<-ids
				<-conns
				stalledConn := <-conns
				syncGateway(t, g)

				got := make(chan []string, 1)
				var read atomic.Int64
				go func() {
					var msgs []string
					for len(msgs) < n+1 {
						m, _, err := reader.read()
						if err != nil {
							break
						}
						msgs = append(msgs, m)
						read.Add(1)
					}
					got <- msgs
				}()
				// Paced for the reader: at most window messages (32 KiB,
				// under the bound) ahead of what it has read.
				const window = 8
				pad := strings.Repeat("x", size-6)
				deadline := time.Now().Add(60 * time.Second)
				for i := range n {
					for int64(i)-read.Load() >= window {
						if time.Now().After(deadline) {
							t.Fatalf("the reader is stuck after %d messages", read.Load())
						}
						time.Sleep(50 * time.Microsecond)
					}
					g.SendToGroup("room", []byte(fmt.Sprintf("%06d", i)+pad))
				}
				syncGateway(t, g) // every fan-out ran
				st := g.Stats()
				switch policy {
				case SlowDrop:
					if st.SlowDropped == 0 || st.SlowDropped >= n {
						t.Fatalf("%d of %d messages dropped for the stalled client, want some", st.SlowDropped, n)
					}
					// Its queue holds less than the bound and one message.
					if q := stalledConn.SendQueueBytes(); q >= bound+size+16 {
						t.Errorf("the stalled client's queue holds %d bytes, want under %d", q, bound+size+16)
					}
					if st.SlowClosed != 0 || srv.SlowConsumers() != 0 {
						t.Errorf("closed as slow: gateway %d, server %d; want none", st.SlowClosed, srv.SlowConsumers())
					}
				case SlowClose:
					if st.SlowDropped != 0 {
						t.Errorf("%d messages dropped under SlowClose", st.SlowDropped)
					}
					closed := st.SlowClosed
					if ws {
						closed = srv.SlowConsumers()
					}
					if closed != 1 {
						t.Errorf("%d clients closed as slow consumers, want 1", closed)
					}
				}
				// The stalled client reads now.
				want := n - int(st.SlowDropped)
				last := -1
				for k := 0; ; k++ {
					if policy == SlowDrop && k == want {
						break
					}
					m, code, err := stalled.read()
					if err != nil {
						if policy == SlowDrop {
							t.Fatalf("the stalled client's connection ended after %d messages (code %d): %v", k, code, err)
						}
						if ws && code != int(websocket.StatusPolicyViolation) {
							t.Errorf("closed with %d, want 1008", code)
						}
						if k == 0 || k == n {
							t.Errorf("the stalled client got %d messages before the close, want a prefix", k)
						}
						t.Logf("the stalled client got %d of %d messages, then the close (code %d)", k, n, code)
						break
					}
					seq, _ := strconv.Atoi(m[:6])
					if policy == SlowClose && seq != last+1 || seq <= last {
						t.Fatalf("the stalled client got message %d after %d", seq, last)
					}
					last = seq
				}
				g.SendToGroup("room", []byte("end"))
				if policy == SlowDrop {
					if m, _, err := stalled.read(); m != "end" || err != nil {
						t.Fatalf("after its %d messages the stalled client got %q, %v; want end", want, m, err)
					}
					t.Logf("the stalled client got %d of %d messages, %d dropped and counted", want, n, st.SlowDropped)
				}
				msgs := <-got
				if len(msgs) != n+1 || msgs[n] != "end" {
					t.Fatalf("the reader got %d messages, want %d and end", len(msgs), n)
				}
				for i, m := range msgs[:n] {
					if m[:6] != fmt.Sprintf("%06d", i) {
						t.Fatalf("the reader's message %d is %q", i, m[:6])
					}
				}
			})
		}
	}
}
