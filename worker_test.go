//go:build linux || darwin || freebsd

package herd

// The Worker's life: Run, twice, after Shutdown.

import (
	"bufio"
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"
)

func TestRunTwice(t *testing.T) {
	t.Parallel()
	w := &Worker{Addr: "text://127.0.0.1:0", Count: 1, OnMessage: textEcho}
	r := startWorker(t, w)
	c := r.dial(t)
	echoLine(t, c, bufio.NewReader(c), "running")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := w.Run(ctx); !errors.Is(err, ErrRunning) {
		t.Errorf("second Run: got %v, want ErrRunning", err)
	}
	echoLine(t, c, bufio.NewReader(c), "still running")
	c.Close()
	r.cancel()
	if err := r.wait(t); err != nil {
		t.Fatalf("first Run: %v", err)
	}
	if err := w.Run(ctx); !errors.Is(err, ErrWorkerClosed) {
		t.Errorf("Run after stop: got %v, want ErrWorkerClosed", err)
	}
	if err := w.Listen(); !errors.Is(err, ErrWorkerClosed) {
		t.Errorf("Listen after stop: got %v, want ErrWorkerClosed", err)
	}
}

func TestRunAfterShutdown(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	// Shut down while running.
	w := &Worker{Addr: "text://127.0.0.1:0", Count: 1, OnMessage: textEcho}
	r := startWorker(t, w)
	c := r.dial(t)
	echoLine(t, c, bufio.NewReader(c), "up")
	c.Close()
	if err := w.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if err := r.wait(t); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if err := w.Run(ctx); !errors.Is(err, ErrWorkerClosed) {
		t.Errorf("Run after Shutdown: got %v, want ErrWorkerClosed", err)
	}
	if err := w.Shutdown(ctx); err != nil {
		t.Errorf("second Shutdown: %v", err)
	}
	if _, err := net.DialTimeout("tcp", r.addr, time.Second); err == nil {
		t.Errorf("dial after Shutdown succeeded")
	}

	// Shut down after Listen, before Run: the port is released.
	w2 := &Worker{Addr: "text://127.0.0.1:0", Count: 1, Logger: quietLogger()}
	if err := w2.Listen(); err != nil {
		t.Fatal(err)
	}
	addr := w2.ListenAddr().String()
	if err := w2.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown before Run: %v", err)
	}
	if err := w2.Run(ctx); !errors.Is(err, ErrWorkerClosed) {
		t.Errorf("Run after Shutdown: got %v, want ErrWorkerClosed", err)
	}
	if _, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		t.Errorf("dial after Shutdown succeeded")
	}

	// Shut down before Listen.
	w3 := &Worker{Addr: "text://127.0.0.1:0", Count: 1, Logger: quietLogger()}
	if err := w3.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown of a new worker: %v", err)
	}
	if err := w3.Run(ctx); !errors.Is(err, ErrWorkerClosed) {
		t.Errorf("Run after Shutdown of a new worker: got %v, want ErrWorkerClosed", err)
	}
}

// ReusePort is a listen mode of its own: with another Accept mode it is a
// contradiction, which Run reports instead of choosing.
func TestReusePortWithAcceptModeIsAnError(t *testing.T) {
	w := &Worker{Addr: "tcp://127.0.0.1:0", ReusePort: true, Accept: AcceptLeastConns, Logger: quietLogger()}
	err := w.Run(context.Background())
	if err == nil || !strings.Contains(err.Error(), "ReusePort") {
		t.Fatalf("Run: %v; want an error naming ReusePort", err)
	}
}
