//go:build linux || darwin || freebsd

package herdtest

import (
	"bytes"
	"strings"
	"sync"
	"testing"
	"time"
)

// Output collects what a command run inside a test writes (an example's
// run function, say), safe for the goroutines that write it.
type Output struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (o *Output) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.b.Write(p)
}

func (o *Output) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.b.String()
}

// ListenAddr waits, at most 10 s, for the "listening on ADDR" the examples
// print first, and returns ADDR without its scheme.
func (o *Output) ListenAddr(t testing.TB) string {
	t.Helper()
	return o.AddrAfter(t, "listening on ")
}

// AddrAfter waits, at most 10 s, for marker followed by an address and a
// space (such as the "admin pages on ADDR (...)" of examples/http), and
// returns the address without its scheme.
func (o *Output) AddrAfter(t testing.TB, marker string) string {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if _, rest, ok := strings.Cut(o.String(), marker); ok {
			if addr, _, ok := strings.Cut(rest, " "); ok {
				if _, a, ok := strings.Cut(addr, "://"); ok {
					return a
				}
				return addr
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no address after %q printed within 10s: %q", marker, o.String())
		}
	}
}
