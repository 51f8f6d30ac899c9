//go:build linux

package balancer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/seed358e4494/herd"
	"github.com/seed358e4494/herd/internal/herdtest"
	"github.com/seed358e4494/herd/internal/loopback"
)

// A proxied answer cut short must not reach the client as a whole one. Here
// both peers end (the client's request half-closed, the backend's answer
// whole and closed), and the proxy still holds part of the answer for a
// client that reads nothing: when IdleTimeout, or the end of a graceful
// stop, cuts it, the client sees a reset, not an end of stream (it did
// once the proxy had read the backend's end: the queue was dropped and the
// socket closed as usual).
func TestCutAnswerResets(t *testing.T) {
	t.Parallel()
	const answer = 5 << 20
	for _, how := range []string{"idle", "stop"} {
		for _, splice := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/splice=%v", how, splice), func(t *testing.T) {
				be := startBackend(t, func(c *net.TCPConn) {
					c.Read(make([]byte, 100))
					c.Write(make([]byte, answer))
				})
				b := &Balancer{Backends: []Backend{{Addr: be.addr}}, Splice: splice, Logger: quiet}
				w := &herd.Worker{Addr: "tcp://127.0.0.1:0", Count: 1, Logger: quiet}
				if how == "idle" {
					w.IdleTimeout = 500 * time.Millisecond
				}
				if err := b.Attach(w); err != nil {
					t.Fatal(err)
				}
				addr := herdtest.Run(t, w)
				c, err := net.Dial("tcp", addr)
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				c.(*net.TCPConn).SetReadBuffer(64 << 10)
				c.Write([]byte("GET"))
				c.(*net.TCPConn).CloseWrite()
				// Whether the proxy has read the backend's end by then (its
				// reading pauses while the client's queue is high) or not, a
				// cut must reset.
				herdtest.WaitFor(t, "the answer under way", func() bool {
					return b.Stats().Backends[0].BytesOut > 1<<20
				})
				time.Sleep(200 * time.Millisecond)
				if how == "stop" {
					ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
					defer cancel()
					w.Shutdown(ctx)
				} else {
					time.Sleep(1500 * time.Millisecond) // past IdleTimeout, twice over
				}
				c.SetReadDeadline(time.Now().Add(10 * time.Second))
				n, err := io.Copy(io.Discard, c)
				if n < answer && !errors.Is(err, syscall.ECONNRESET) {
					t.Errorf("the client got %d of %d bytes, then %v; want a reset for a cut answer", n, answer, err)
				}
			})
		}
	}
}

// A client that downloads steadily but slower than the backend sends is
// never idle, however long the proxy's reading of the backend waits for
// it: IdleTimeout cuts only a pipe neither of whose ends moves.
func TestSlowDownloadNotIdle(t *testing.T) {
	t.Parallel()
	const total = 2 << 20
	for _, splice := range []bool{false, true} {
		t.Run(fmt.Sprintf("splice=%v", splice), func(t *testing.T) {
			be := startBackend(t, func(c *net.TCPConn) {
				c.Write(make([]byte, total))
				c.CloseWrite()
				io.Copy(io.Discard, c)
			})
			b := &Balancer{Backends: []Backend{{Addr: be.addr}}, Splice: splice, Logger: quiet}
			addr := runBalancer(t, b, func(w *herd.Worker) { w.IdleTimeout = 500 * time.Millisecond })
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.(*net.TCPConn).SetReadBuffer(32 << 10)
			c.SetReadDeadline(time.Now().Add(30 * time.Second))
			buf := make([]byte, 16<<10)
			got := 0
			for got < total {
				n, err := c.Read(buf)
				got += n
				if err != nil {
					t.Fatalf("the download was cut after %d of %d bytes: %v", got, total, err)
				}
				time.Sleep(20 * time.Millisecond) // about 800 KB/s at most, 16 KiB at a time
			}
		})
	}
}

// TestBackpressureWithBackendGone: a backend that sends 8 MiB and closes,
// to a client that reads nothing yet, is read no further than about the
// high mark ahead of the client, as when it stays open (the hang-up both
// ways made the proxy read it all, several MB per client); once the client
// reads, it gets every byte, then the end.
func TestBackpressureWithBackendGone(t *testing.T) {
	t.Parallel()
	const answer = 8 << 20
	for _, splice := range []bool{false, true} {
		t.Run(fmt.Sprintf("splice=%v", splice), func(t *testing.T) {
			be := startBackend(t, func(c *net.TCPConn) {
				c.Read(make([]byte, 100))
				c.Write(make([]byte, answer))
			})
			b := &Balancer{Backends: []Backend{{Addr: be.addr}}, Splice: splice, Logger: quiet}
			var w *herd.Worker
			addr := runBalancer(t, b, func(wk *herd.Worker) { w = wk })
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.(*net.TCPConn).SetReadBuffer(64 << 10)
			c.Write([]byte("GET"))
			c.(*net.TCPConn).CloseWrite()
			time.Sleep(1500 * time.Millisecond)
			var queued int64
			for _, l := range w.Stats().Loops {
				queued += l.SendQueueBytes
			}
			if queued > 1<<20 {
				t.Errorf("%d bytes queued for a client that reads nothing, want about the high mark (512 KiB)", queued)
			}
			c.SetReadDeadline(time.Now().Add(20 * time.Second))
			if n, err := io.Copy(io.Discard, c); n != answer || err != nil {
				t.Errorf("the client got %d of %d bytes, then %v; want all, then the end", n, answer, err)
			}
		})
	}
}

// A client the IdleTimeout closes while its backend is still connecting
// was told there is no answer (an end of stream): nothing it sent may
// reach the backend afterwards. Before, the connect completing later sent
// the early data and then a clean end, so that a backend could take a
// request that its client would retry elsewhere for a whole one.
func TestIdleWhileConnectingSendsNothing(t *testing.T) {
	t.Parallel()
	backend, open := loopback.LateAddr(t)
	b, _, c := connectingSession(t, backend, func(w *herd.Worker) { w.IdleTimeout = 300 * time.Millisecond })
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := c.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Fatalf("client read %d bytes, %v; want the end of stream of an idle close", n, err)
	}
	// The client keeps its socket open: its close never reaches the
	// balancer before the connect completes.
	ln := open()
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.SetReadDeadline(time.Now().Add(10 * time.Second))
	got, err := io.ReadAll(s)
	if len(got) != 0 || !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("the backend read %q, then %v; want nothing, and a reset", got, err)
	}
	if st := b.Stats().Backends[0]; st.BytesIn != 0 {
		t.Fatalf("%d bytes counted as sent to the backend", st.BytesIn)
	}
}
