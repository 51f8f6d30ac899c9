//go:build linux || darwin || freebsd

// Package herdtest runs a Worker for the tests of the packages built on
// herd (the protocol packages); herd's own tests, inside the package, have
// their own helpers.
package herdtest

import (
	"context"
	"io"
	"testing"
	"time"

	"github.com/seed358e4494/herd"
)

// Run binds w (over TLS when OverTLS), runs it until the test ends (then stops it and waits, at
// most 10s, for Run to return) and gives its listening address.
func Run(t testing.TB, w *herd.Worker) string {
	t.Helper()
	if OverTLS() && w.TLS == nil {
		w.TLS, _ = SharedTLS()
		w.TLS.NextProtos = []string{"http/1.1"}
	}
	if err := w.Listen(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Error("worker did not stop")
		}
	})
	return w.ListenAddr().String()
}

// Throttle reads from r at about rate bytes per second, in reads of at most
// 16 KiB: a slow client, for tests of what a server owes.
func Throttle(r io.Reader, rate int) io.Reader { return &throttled{r: r, rate: rate} }

type throttled struct {
	r     io.Reader
	rate  int
	start time.Time
	got   int
}

func (t *throttled) Read(p []byte) (int, error) {
	if t.start.IsZero() {
		t.start = time.Now()
	}
	n, err := t.r.Read(p[:min(len(p), 16<<10)])
	t.got += n
	if ahead := time.Duration(t.got)*time.Second/time.Duration(t.rate) - time.Since(t.start); ahead > 0 {
		time.Sleep(ahead)
	}
	return n, err
}

// WaitFor polls cond until it holds, and fails the test if it does not
// within 10 s.
func WaitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after 10s waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
