//go:build linux

package herd_test

import (
	"crypto/tls"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/seed358e4494/herd"
	"github.com/seed358e4494/herd/protocol"
)

// rawTap keeps the ciphertext the client receives.
type rawTap struct {
	net.Conn
	mu  sync.Mutex
	got []byte
}

func (r *rawTap) Read(b []byte) (int, error) {
	n, err := r.Conn.Read(b)
	r.mu.Lock()
	r.got = append(r.got, b[:n]...)
	r.mu.Unlock()
	return n, err
}

// TestTLSCloseDuringSend: a goroutine Writes while another Closes (or
// CloseWrites): every
// close ends with close_notify, after whole records. Once a Send's records
// were gathered into one write, the alert could join a writer's batch,
// which the close then refused: 24 to 30 of 30 streams ended with a bare
// FIN (found by review).
func TestTLSCloseDuringSend(t *testing.T) {
	t.Parallel()
	_, addr, cli := tlsEcho(t, protocol.Text{}, func(w *herd.Worker) {
		w.Count = 1
		w.OnMessage = func(c *herd.Conn, msg []byte) {
			chunk := make([]byte, 512)
			go func() { // G1: a producer off the loop
				for i := 0; i < 8<<10; i++ { // at most 4 MiB
					if _, err := c.Write(chunk); err != nil {
						return
					}
				}
			}()
			end := c.Close
			if string(msg) == "closewrite" {
				end = c.CloseWrite
			}
			time.AfterFunc(5*time.Millisecond, end) // G2
		}
	})
	cfg := cli.Clone()
	cfg.MaxVersion = tls.VersionTLS12 // outer record types visible
	for _, how := range []string{"close", "closewrite"} {
		missing := 0
		const rounds = 10
		for range rounds {
			raw, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			tap := &rawTap{Conn: raw}
			c := tls.Client(tap, cfg)
			c.SetDeadline(time.Now().Add(20 * time.Second))
			io.WriteString(c, how+"\n")
			io.Copy(io.Discard, c) // until close_notify, or EOF without it
			// Drain what follows at the TCP level too.
			io.Copy(io.Discard, raw)
			c.Close()
			// Walk the records: the last must be an alert (close_notify).
			b, last := tap.got, byte(0)
			for len(b) >= 5 {
				n := 5 + (int(b[3])<<8 | int(b[4]))
				if n > len(b) {
					break
				}
				last, b = b[0], b[n:]
			}
			if last != 21 || len(b) != 0 {
				t.Logf("last record type %d, %d bytes past the last whole record, %d bytes in all", last, len(b), len(tap.got))
				missing++
			}
		}
		if missing > 0 {
			t.Errorf("%s: %d of %d graceful closes ended without close_notify", how, missing, rounds)
		}
	}
}
