package websocket

// Frames are owed: replies to a slow reader all arrive, byte-exact, with
// and without compression; pushes to a slow consumer close it with a code
// instead of piling up or skipping a compressed frame.

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"math/rand"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/seed358e4494/herd"
	"github.com/seed358e4494/herd/internal/herdtest"
	"github.com/seed358e4494/herd/internal/soak"
	herdhttp "github.com/seed358e4494/herd/protocol/http"
)

// dialWS makes a handshake over a connection with a small receive buffer.
func dialWS(t *testing.T, addr, extra string) *wsClient {
	t.Helper()
	d := net.Dialer{Control: func(network, address string, rc syscall.RawConn) error {
		return rc.Control(func(fd uintptr) {
			syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 16<<10)
			// Loopback's MSS is about 64 KiB, more than the buffer: the
			// window would open by less than a segment and the server
			// wait for TCP's persist timer (hundreds of ms). A real
			// network's MSS keeps a small buffer flowing.
			syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_MAXSEG, 1400)
		})
	}}
	conn, err := d.Dial("tcp", addr)
	if err == nil {
		conn, err = herdtest.Client(conn)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	conn.SetDeadline(time.Now().Add(120 * time.Second))
	io.WriteString(conn, handshake(addr, extra))
	br := bufio.NewReader(conn)
	resp, err := readHTTPResponse(br)
	if err != nil || resp != 101 {
		t.Fatalf("handshake: %d %v", resp, err)
	}
	return &wsClient{t: t, conn: conn, br: br}
}

// readHTTPResponse reads a response head and returns its status.
func readHTTPResponse(br *bufio.Reader) (int, error) {
	line, err := br.ReadString('\n')
	if err != nil {
		return 0, err
	}
	var code int
	fmt.Sscanf(line, "HTTP/1.1 %d", &code)
	for {
		l, err := br.ReadString('\n')
		if err != nil {
			return 0, err
		}
		if l == "\r\n" {
			return code, nil
		}
	}
}

// Finding 9: a client reading a little slowly got 4,321 of 20,000 echoes
// (with gaps), and with permessage-deflate 239 of those carried wrong
// bytes. Now all 20,000 arrive, byte-exact, with and without compression.
func TestSlowReaderGetsEveryEcho(t *testing.T) {
	for _, deflate := range []bool{false, true} {
		t.Run(fmt.Sprintf("deflate=%v", deflate), func(t *testing.T) {
			t.Parallel()
			n, size := 20000, 2<<10
			if raceDetector && (deflate || !soak.Enabled()) {
				// Still past the 4,321 (8.6 MB) after which echoes went
				// missing; CI runs all 20,000 without the race detector.
				n = 5000
				t.Logf("%d echoes under the race detector", n)
			}
			s, _ := echoServer()
			s.Compression = deflate
			addr := serveWS(t, s)
			extra := ""
			if deflate {
				extra = "Sec-WebSocket-Extensions: permessage-deflate\r\n"
			}
			c := dialWS(t, addr, extra)
			rng := rand.New(rand.NewSource(1))
			msgs := make([][]byte, n)
			for i := range msgs {
				msgs[i] = append([]byte(fmt.Sprintf("%06d ", i)), randomText(rng, size-7)[:size-7]...)
			}
			go func() {
				cd := &clientDeflater{takeover: true}
				w := bufio.NewWriterSize(c.conn, 64<<10)
				for _, m := range msgs {
					if deflate {
						w.Write(clientFrame(true, rsv1Bit, OpBinary, cd.compress(m)))
					} else {
						w.Write(clientFrame(true, 0, OpBinary, m))
					}
				}
				w.Flush()
			}()
			time.Sleep(100 * time.Millisecond) // stalled at first
			br := bufio.NewReader(herdtest.Throttle(c.br, 20<<20))
			ci := &clientInflater{takeover: true}
			for i, want := range msgs {
				f, err := readServerFrame(br)
				if err != nil {
					t.Fatalf("echo %d of %d: %v", i, n, err)
				}
				got := f.payload
				if f.rsv1 {
					if got, err = ci.inflate(f.payload); err != nil {
						t.Fatalf("echo %d: inflate: %v", i, err)
					}
				}
				if f.op != OpBinary || !bytes.Equal(got, want) {
					t.Fatalf("echo %d: op %v, %d bytes, byte-exact %v", i, f.op, len(got), bytes.Equal(got, want))
				}
			}
		})
	}
}

// Finding 10: a broadcast to connections of which some read nothing gave
// the non-readers 59 of 100 messages, kept them connected, and held ~1.8
// MB each. Now the readers get every message, the non-readers are closed
// as slow consumers (1008), and what the server queues stays bounded.
func TestBroadcastSlowConsumers(t *testing.T) {
	t.Parallel()
	const readers, stalled, msgs, size = 20, 10, 100, 64 << 10
	var mu sync.Mutex
	var conns []*Conn
	codes := make(chan StatusCode, readers+stalled)
	s := &Server{
		OnOpen: func(c *Conn, r *herdhttp.Request) {
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		},
		OnClose: func(c *Conn, code StatusCode, reason string) { codes <- code },
	}
	w := &herd.Worker{Addr: "tcp://127.0.0.1:0", Count: 2, Logger: slog.New(slog.DiscardHandler), StopTimeout: 500 * time.Millisecond}
	if err := (&herdhttp.Server{Handler: func(w *herdhttp.ResponseWriter, r *herdhttp.Request) { s.Upgrade(w, r) }}).Attach(w); err != nil {
		t.Fatal(err)
	}
	addr := herdtest.Run(t, w)
	for i := 0; i < stalled; i++ {
		dialWS(t, addr, "") // never reads
	}
	var got atomic.Int64
	var wg sync.WaitGroup
	for i := 0; i < readers; i++ {
		c := dialWS(t, addr, "")
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := 0; k < msgs; k++ {
				f, err := readServerFrame(c.br)
				if err != nil || len(f.payload) != size || f.payload[0] != byte(k) {
					t.Errorf("reader: message %d: %v", k, err)
					return
				}
				got.Add(1)
			}
		}()
	}
	herdtest.WaitFor(t, "every handshake", func() bool { mu.Lock(); defer mu.Unlock(); return len(conns) == readers+stalled })
	var peak int64
	for k := 0; k < msgs; k++ {
		msg := bytes.Repeat([]byte{byte(k)}, size)
		mu.Lock()
		all := append([]*Conn(nil), conns...)
		mu.Unlock()
		Broadcast(all, OpBinary, msg)
		var q int64
		for _, l := range w.Stats().Loops {
			q += l.SendQueueBytes
		}
		peak = max(peak, q)
		time.Sleep(2 * time.Millisecond)
	}
	wg.Wait()
	if g := got.Load(); g != readers*msgs {
		t.Errorf("readers got %d of %d messages", g, readers*msgs)
	}
	if n := s.SlowConsumers(); n != stalled {
		t.Errorf("SlowConsumers = %d, want %d", n, stalled)
	}
	slow := 0
	for i := 0; i < stalled; i++ {
		select {
		case code := <-codes:
			if code == StatusPolicyViolation {
				slow++
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%d of %d stalled connections closed", i, stalled)
		}
	}
	if slow != stalled {
		t.Errorf("%d of %d stalled connections closed with 1008", slow, stalled)
	}
	// Each stalled connection holds at most the bound plus one message,
	// and each reader what it has not read yet of a few messages.
	if bound := int64(stalled*(DefaultMaxQueuedBytes+size) + readers*8*size); peak > bound {
		t.Errorf("send queues peaked at %d bytes; bound %d", peak, bound)
	}
	t.Logf("send queues peaked at %d KiB", peak>>10)
}

// Finding 8: "Connection: Upgrade, close" got a 101 and an immediate close.
// The upgrade wins: the connection carries WebSocket.
func TestUpgradeWithClose(t *testing.T) {
	s, _ := echoServer()
	addr := serveWS(t, s)
	req := "GET /ws HTTP/1.1\r\nHost: " + addr + "\r\nUpgrade: websocket\r\nConnection: Upgrade, close\r\n" +
		"Sec-WebSocket-Key: " + sampleKey + "\r\nSec-WebSocket-Version: 13\r\n\r\n"
	c, resp := rawRequest(t, addr, req)
	if resp.StatusCode != 101 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	c.send(text("still here"))
	if f := c.read(); string(f.payload) != "still here" {
		t.Fatalf("echo %v", f)
	}
}
