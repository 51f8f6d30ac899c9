//go:build linux || darwin || freebsd

package herd

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strings"
	"testing"
	"time"
)

// listenerFile is a listening TCP socket on 127.0.0.1 as a file of the
// test's; the test closes it at its end.
func listenerFile(t *testing.T) (*os.File, string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	f, err := ln.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f, ln.Addr().String()
}

// TestListenFiles: a worker serves the file bound to its address and
// leaves the others (another address, a pipe, a datagram socket) alone;
// with port 0 any port on its host does; with none, it binds anew; a
// udp:// worker takes the datagram socket. The files stay the caller's.
func TestListenFiles(t *testing.T) {
	a, addrA := listenerFile(t)
	b, addrB := listenerFile(t)
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	defer pw.Close()
	uc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer uc.Close()
	u, err := uc.(*net.UDPConn).File()
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	files := []*os.File{pr, b, u, a}

	for _, tc := range []struct {
		name, addr string
		want       []*os.File
		bound      string // "" for a port of its own
	}{
		{"address", "text://" + addrA, []*os.File{a}, addrA},
		{"port 0, one socket to serve", "text://127.0.0.1:0", []*os.File{b}, addrB},
		{"none bound there", "text://127.0.0.2:0", nil, ""},
		{"udp", "udp://127.0.0.1:0", []*os.File{u}, uc.LocalAddr().String()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := &Worker{Addr: tc.addr, Count: 1, OnMessage: textEcho, Logger: quietLogger(),
				OnPacket: func(*Packet, []byte) {}}
			if strings.HasPrefix(tc.addr, "udp") {
				w.OnMessage = nil
			} else {
				w.OnPacket = nil
			}
			used, err := w.ListenFiles(files)
			if err != nil {
				t.Fatal(err)
			}
			defer w.Shutdown(context.Background())
			if !slices.Equal(used, tc.want) {
				t.Errorf("used %v, want %v", names(used), names(tc.want))
			}
			got := w.ListenAddr().String()
			switch {
			case tc.bound != "" && got != tc.bound:
				t.Errorf("serves %s, want %s", got, tc.bound)
			case tc.bound == "" && tc.want == nil && (got == addrA || got == addrB):
				t.Errorf("serves %s, one of the files' addresses", got)
			}
		})
	}
	// Every worker above closed what it served: the files still listen.
	for _, f := range []*os.File{a, b} {
		ln, err := net.FileListener(f)
		if err != nil {
			t.Fatalf("%s after the workers: %v", f.Name(), err)
		}
		ln.Close()
	}
	w := &Worker{Addr: "text://" + addrB, Count: 1, OnMessage: textEcho, Logger: quietLogger()}
	if _, err := w.ListenFiles([]*os.File{b}); err != nil {
		t.Fatal(err)
	}
	r := startWorker(t, w)
	c, err := net.DialTimeout("tcp", addrB, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	echoLine(t, c, bufio.NewReader(c), "served on the file's socket")
	c.Close() // else the graceful stop waits for it
	r.cancel()
	r.wait(t)
}

func names(files []*os.File) []string {
	var s []string
	for _, f := range files {
		s = append(s, f.Name())
	}
	return s
}

// TestListenIgnoresEnvironment: Listen takes no socket the environment
// names (an upgrade's HERD_LISTENERS, systemd's LISTEN_FDS) and leaves the
// environment as it was; package upgrade does both for a program that asks.
func TestListenIgnoresEnvironment(t *testing.T) {
	f, addr := listenerFile(t)
	w := &Worker{Name: "env", Addr: "text://127.0.0.1:0", Count: 1, OnMessage: textEcho, Logger: quietLogger()}
	env := map[string]string{
		"HERD_LISTENERS": fmt.Sprintf(`{"env\u0000text://127.0.0.1:0":[%d]}`, f.Fd()),
		"LISTEN_PID":     fmt.Sprint(os.Getpid()),
		"LISTEN_FDS":     fmt.Sprint(int(f.Fd()) - 2), // descriptors 3 to f's
	}
	for k, v := range env {
		t.Setenv(k, v)
	}
	if err := w.Listen(); err != nil {
		t.Fatal(err)
	}
	defer w.Shutdown(context.Background())
	if got := w.ListenAddr().String(); got == addr {
		t.Errorf("Listen took the socket the environment names (%s)", addr)
	}
	for k, v := range env {
		if got := os.Getenv(k); got != v {
			t.Errorf("%s is %q after Listen, was %q", k, got, v)
		}
	}
}

// TestHandover: a worker lends its ReusePort group to another (in-process
// here; a new process in an upgrade). Rolled back, the first steers the
// group over its own loops again, which the second had steered over its
// one: new connections reach both of the first's loops. Committed, the
// first accepts no more and the second takes every new connection, while
// a connection the first holds is served on. The files are closed either
// way, Rollback after Commit does nothing, and there is no second Handover.
func TestHandover(t *testing.T) {
	old := &Worker{Addr: "text://127.0.0.1:0", Count: 2, ReusePort: true, OnMessage: textEcho, Logger: quietLogger()}
	if err := old.Listen(); err != nil {
		t.Fatal(err)
	}
	if _, err := old.Handover(); !errors.Is(err, ErrNotRunning) {
		t.Errorf("Handover before Run: %v, want ErrNotRunning", err)
	}
	r := startWorker(t, old)
	waitFor(t, 5*time.Second, "loops", func() bool { return len(old.Loops()) == 2 })
	accepted := func(w *Worker) []uint64 {
		var n []uint64
		for _, l := range w.Stats().Loops {
			n = append(n, l.Accepted)
		}
		return n
	}
	connect := func(n int) {
		t.Helper()
		for i := range n {
			c, err := net.DialTimeout("tcp", r.addr, 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			c.SetDeadline(time.Now().Add(10 * time.Second))
			echoLine(t, c, bufio.NewReader(c), fmt.Sprint(i))
			c.Close()
		}
	}
	lend := func() (*Handover, *running) {
		t.Helper()
		h, err := old.Handover()
		if err != nil {
			t.Fatal(err)
		}
		if len(h.Files) != 2 {
			t.Fatalf("%d files, want the 2 sockets of the group", len(h.Files))
		}
		next := &Worker{Addr: old.Addr, Count: 1, ReusePort: true, OnMessage: textEcho, Logger: quietLogger()}
		if used, err := next.ListenFiles(h.Files); err != nil || len(used) != 2 {
			t.Fatalf("ListenFiles: %d used, %v", len(used), err)
		}
		nr := startWorker(t, next)
		waitFor(t, 5*time.Second, "the next worker's loop", func() bool { return next.Loops() != nil })
		return h, nr
	}
	closed := func(h *Handover) {
		t.Helper()
		for _, f := range h.Files {
			if err := f.Close(); !errors.Is(err, os.ErrClosed) {
				t.Errorf("a file of the handover is open after it ended: Close = %v", err)
			}
		}
	}

	h, next := lend()
	next.cancel()
	next.wait(t)
	h.Rollback()
	closed(h)
	before := accepted(old)
	const n = 200
	connect(n)
	old.mu.Lock()
	steered := old.sc.steered
	old.mu.Unlock()
	for i, after := range accepted(old) {
		switch got := after - before[i]; {
		case !steered:
			t.Logf("no steering of the group here (qemu-user?): loop %d accepted %d of %d", i, got, n)
		case got < n/4:
			t.Errorf("rolled back: loop %d accepted %d of %d (%v before)", i, got, n, before)
		}
	}

	held, err := net.DialTimeout("tcp", r.addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	held.SetDeadline(time.Now().Add(10 * time.Second))
	heldR := bufio.NewReader(held)
	echoLine(t, held, heldR, "before the handover")
	onLoop(t, old.Loops()[0], func() {
		if _, err := old.Handover(); !errors.Is(err, ErrHandoverOnLoop) {
			t.Errorf("Handover on a loop: %v, want ErrHandoverOnLoop", err)
		}
	})
	h, next = lend()
	if _, err := old.Handover(); !errors.Is(err, ErrLent) {
		t.Errorf("a Handover while one is open: %v, want ErrLent", err)
	}
	if err := old.Scale(context.Background(), 3); !errors.Is(err, ErrLent) {
		t.Errorf("Scale while a Handover is open: %v, want ErrLent", err)
	}
	h.Commit()
	h.Rollback()
	closed(h)
	before = accepted(old)
	connect(n)
	if after := accepted(old); !slices.Equal(after, before) {
		t.Errorf("committed: the old worker accepted %v, was %v", after, before)
	}
	if got := accepted(next.w)[0]; got != n {
		t.Errorf("committed: the next worker accepted %d of %d", got, n)
	}
	echoLine(t, held, heldR, "after the handover")
	if _, err := old.Handover(); !errors.Is(err, ErrWorkerClosed) {
		t.Errorf("a second Handover: %v, want ErrWorkerClosed", err)
	}
	held.Close() // else the graceful stop waits for it
	next.cancel()
	next.wait(t)
	r.cancel()
	r.wait(t)
}
