package websocket

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/seed358e4494/herd"
	"github.com/seed358e4494/herd/internal/herdtest"
	herdhttp "github.com/seed358e4494/herd/protocol/http"
)

// TestScaleKeepsConnections: WebSocket connections live through
// Worker.Scale taking their loops away and adding loops back: every echo
// arrives, none is closed, and the keepalive timers went along (each
// client is still pinged after the last change).
func TestScaleKeepsConnections(t *testing.T) {
	const clients = 40
	var closes atomic.Int32
	s := &Server{
		OnMessage:    func(c *Conn, op OpCode, data []byte) { c.WriteMessage(op, data) },
		OnClose:      func(*Conn, StatusCode, string) { closes.Add(1) },
		PingInterval: 30 * time.Millisecond,
		PongTimeout:  300 * time.Millisecond,
	}
	w := &herd.Worker{Addr: "tcp://127.0.0.1:0", Count: 4, ReusePort: true, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	if err := (&herdhttp.Server{Handler: func(rw *herdhttp.ResponseWriter, r *herdhttp.Request) { s.Upgrade(rw, r) }}).Attach(w); err != nil {
		t.Fatal(err)
	}
	addr := herdtest.Run(t, w)

	var (
		phase   atomic.Int32 // 0: echo; 1: answer pings only
		pingsP1 atomic.Int32 // clients pinged in phase 1
		echoes  atomic.Int64
		wg      sync.WaitGroup
		errs    = make(chan error, clients)
	)
	for i := range clients {
		c := dial(t, addr, "")
		wg.Add(1)
		go func() {
			defer wg.Done()
			pinged := false
			for n := 0; ; n++ {
				c.conn.SetDeadline(time.Now().Add(5 * time.Second))
				if phase.Load() == 0 {
					msg := fmt.Sprintf("c%d-%d", i, n)
					if _, err := c.conn.Write(text(msg)); err != nil {
						errs <- err
						return
					}
					if err := readEcho(c, msg); err != nil {
						errs <- fmt.Errorf("client %d: %w", i, err)
						return
					}
					echoes.Add(1)
					continue
				}
				f, err := readServerFrame(c.br)
				if err != nil {
					errs <- fmt.Errorf("client %d, answering pings: %w", i, err)
					return
				}
				if f.op != OpPing {
					errs <- fmt.Errorf("client %d: %v frame while idle", i, f.op)
					return
				}
				c.conn.Write(clientFrame(true, 0, OpPong, f.payload))
				if !pinged {
					pinged = true
					if pingsP1.Add(1) == clients {
						return
					}
				}
				if phase.Load() == 2 {
					return
				}
			}
		}()
	}
	herdtest.WaitFor(t, "echoes", func() bool { return echoes.Load() > 200 })
	for _, n := range []int{1, 3} {
		before := echoes.Load()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if err := w.Scale(ctx, n); err != nil {
			t.Fatalf("Scale(%d): %v", n, err)
		}
		cancel()
		herdtest.WaitFor(t, "echoes after Scale", func() bool { return echoes.Load() > before+200 })
	}
	phase.Store(1)
	herdtest.WaitFor(t, "every client pinged after the last Scale", func() bool { return pingsP1.Load() == clients || len(errs) > 0 })
	phase.Store(2)
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case err := <-errs:
		t.Fatal(err)
	}
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := closes.Load(); n != 0 {
		t.Errorf("%d connections closed during Scale", n)
	}
	st := w.Stats()
	t.Logf("%d echoes, %d clients pinged after Scale 4 → 1 → 3; loops +%d -%d", echoes.Load(), pingsP1.Load(), st.LoopsAdded, st.LoopsRemoved)
}

// readEcho reads frames until the text frame msg, answering pings.
func readEcho(c *wsClient, msg string) error {
	for {
		f, err := readServerFrame(c.br)
		if err != nil {
			return err
		}
		switch f.op {
		case OpPing:
			c.conn.Write(clientFrame(true, 0, OpPong, f.payload))
		case OpText:
			if string(f.payload) != msg {
				return fmt.Errorf("echo %q, want %q", f.payload, msg)
			}
			return nil
		default:
			return fmt.Errorf("unexpected %v frame", f.op)
		}
	}
}

// TestShutdownGoingAway: a graceful stop tells each WebSocket peer with a
// close frame 1001 (Going Away); a peer that answers it is closed at once,
// and Shutdown does not wait for its deadline.
func TestShutdownGoingAway(t *testing.T) {
	s, closed := echoServer()
	w := &herd.Worker{Addr: "tcp://127.0.0.1:0", Count: 2, StopTimeout: 5 * time.Second, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	if err := (&herdhttp.Server{Handler: func(rw *herdhttp.ResponseWriter, r *herdhttp.Request) { s.Upgrade(rw, r) }}).Attach(w); err != nil {
		t.Fatal(err)
	}
	addr := herdtest.Run(t, w)
	clients := make([]*wsClient, 10)
	for i := range clients {
		clients[i] = dial(t, addr, "")
		clients[i].send(text("hello"))
		if f := clients[i].read(); f.op != OpText {
			t.Fatalf("%v", f)
		}
	}
	stopped := make(chan error, 1)
	start := time.Now()
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		stopped <- w.Shutdown(ctx)
	}()
	for i, c := range clients {
		f := c.read()
		if code := closeCodeOf(f); code != StatusGoingAway {
			t.Fatalf("client %d: %v frame, code %d; want close 1001", i, f.op, code)
		}
		c.send(closeFrameFor(StatusGoingAway, ""))
		c.expectEOF()
	}
	if err := <-stopped; err != nil {
		t.Errorf("Shutdown: %v", err)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("Shutdown took %v: it waited for a deadline, not for the closing handshakes", took)
	}
	for range clients {
		if e := waitClose(t, closed); e.code != StatusGoingAway {
			t.Errorf("OnClose: %+v, want 1001", e)
		}
	}
}
