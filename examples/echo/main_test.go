//go:build linux || darwin || freebsd

package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/seed358e4494/herd/internal/herdtest"

	"github.com/seed358e4494/herd"
	"github.com/seed358e4494/herd/protocol"
)

// server is run() on a goroutine, with its output captured.
type server struct {
	t      *testing.T
	cancel context.CancelFunc
	done   chan error
	stdout *herdtest.Output
	stderr *herdtest.Output
	url    string // as printed: scheme://address
}

func startServer(t *testing.T, args ...string) *server {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	s := &server{t: t, cancel: cancel, done: make(chan error, 1), stdout: new(herdtest.Output), stderr: new(herdtest.Output)}
	go func() { s.done <- run(ctx, args, s.stdout, s.stderr) }()
	t.Cleanup(func() {
		if s.cancel != nil {
			s.stop()
		}
	})

	const prefix = "echo: listening on "
	line := s.waitFor(func(out string) bool { return strings.Contains(out, "\n") })
	line, _, _ = strings.Cut(line, "\n")
	if !strings.HasPrefix(line, prefix) {
		t.Fatalf("first line of output %q; want %q...", line, prefix)
	}
	s.url = strings.TrimPrefix(line, prefix)
	return s
}

// dial connects to the server's bound address.
func (s *server) dial() net.Conn {
	s.t.Helper()
	scheme, addr, _ := strings.Cut(s.url, "://")
	network := "tcp"
	if scheme == "unix" {
		network = "unix"
	}
	c, err := net.DialTimeout(network, addr, 5*time.Second)
	if err != nil {
		s.t.Fatalf("dial %s: %v", s.url, err)
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	s.t.Cleanup(func() { c.Close() })
	return c
}

// waitFor polls stdout until ok holds, and returns it.
func (s *server) waitFor(ok func(string) bool) string {
	s.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		out := s.stdout.String()
		if ok(out) {
			return out
		}
		select {
		case err := <-s.done:
			s.cancel = nil
			s.t.Fatalf("run returned early: %v\nstdout:\n%s\nstderr:\n%s", err, out, s.stderr)
		default:
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("timed out waiting on the output; stdout:\n%s\nstderr:\n%s", out, s.stderr)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// stop ends run's context and returns its stdout once it has returned.
func (s *server) stop() string {
	s.t.Helper()
	s.cancel()
	s.cancel = nil
	select {
	case err := <-s.done:
		if err != nil {
			s.t.Errorf("run: %v\nstderr:\n%s", err, s.stderr)
		}
	case <-time.After(15 * time.Second):
		s.t.Fatalf("run did not return after its context ended; stderr:\n%s", s.stderr)
	}
	return s.stdout.String()
}

// statsTable is one stats table as Stats.String prints it.
type statsTable struct {
	header   string
	loops    int
	messages uint64
	accepted uint64
	switches uint64 // voluntary context switches of locked loop threads
}

// parseStats reads every stats table in out, in order.
func parseStats(t *testing.T, out string) []statsTable {
	t.Helper()
	var tables []statsTable
	lines := strings.Split(out, "\n")
	for i := 0; i < len(lines); i++ {
		if !strings.HasPrefix(lines[i], `worker "echo"`) {
			continue
		}
		tab := statsTable{header: lines[i]}
		i++ // the column names
		if i >= len(lines) || !strings.Contains(lines[i], "accepted") || !strings.Contains(lines[i], "messages") {
			t.Fatalf("stats table without its column names:\n%s", out)
		}
		cols := strings.Fields(lines[i])
		accCol, msgCol, swCol := slices.Index(cols, "accepted"), slices.Index(cols, "messages"), slices.Index(cols, "switches")
		if accCol < 0 || msgCol < 0 || swCol < 0 {
			t.Fatalf("stats table without its accepted, messages and switches columns:\n%s", out)
		}
		for i+1 < len(lines) {
			f := strings.Fields(lines[i+1])
			if len(f) < 5 {
				break
			}
			if _, err := strconv.Atoi(f[0]); err != nil {
				break
			}
			acc, err1 := strconv.ParseUint(f[accCol], 10, 64)
			msgs, err2 := strconv.ParseUint(f[msgCol], 10, 64)
			if err1 != nil || err2 != nil {
				t.Fatalf("bad stats row %q", lines[i+1])
			}
			sw, err := strconv.ParseUint(f[swCol], 10, 64)
			if err != nil {
				t.Fatalf("bad switches in stats row %q", lines[i+1])
			}
			tab.loops++
			tab.accepted += acc
			tab.messages += msgs
			tab.switches += sw
			i++
		}
		tables = append(tables, tab)
	}
	return tables
}

func TestEchoText(t *testing.T) {
	for _, mode := range []string{"reuseport", "shared", "roundrobin", "leastconns"} {
		t.Run(mode, func(t *testing.T) {
			s := startServer(t, "-addr", "text://127.0.0.1:0", "-count", "2", "-mode", mode)
			if !strings.HasPrefix(s.url, "text://127.0.0.1:") || strings.HasSuffix(s.url, ":0") {
				t.Fatalf("bound address %q; want text://127.0.0.1:<port>", s.url)
			}

			const clients, lines = 3, 4
			for i := 0; i < clients; i++ {
				c := s.dial()
				r := bufio.NewReader(c)
				for j := 0; j < lines; j++ {
					end := "\n"
					if j%2 == 1 {
						end = "\r\n" // stripped too
					}
					msg := fmt.Sprintf("client %d line %d", i, j)
					if _, err := io.WriteString(c, msg+end); err != nil {
						t.Fatal(err)
					}
					got, err := r.ReadString('\n')
					if err != nil {
						t.Fatalf("reading the echo of %q: %v", msg, err)
					}
					if got != msg+"\n" {
						t.Fatalf("echo %q; want %q", got, msg+"\n")
					}
				}
				c.Close()
			}

			out := s.stop()
			tables := parseStats(t, out)
			if len(tables) != 1 {
				t.Fatalf("want one stats table at exit, got %d:\n%s", len(tables), out)
			}
			tab := tables[0]
			if tab.loops != 2 || tab.accepted != clients || tab.messages != clients*lines {
				t.Errorf("stats: %d loops, %d accepted, %d messages; want 2, %d, %d\n%s",
					tab.loops, tab.accepted, tab.messages, clients, clients*lines, out)
			}
			if !strings.Contains(tab.header, "mode=") {
				t.Errorf("stats header %q does not name the mode", tab.header)
			}
		})
	}
}

func TestEchoStatsOnSIGUSR1(t *testing.T) {
	s := startServer(t, "-addr", "text://127.0.0.1:0", "-count", "2", "-mode", "roundrobin")
	c := s.dial()
	if _, err := io.WriteString(c, "ping\n"); err != nil {
		t.Fatal(err)
	}
	if got, err := bufio.NewReader(c).ReadString('\n'); err != nil || got != "ping\n" {
		t.Fatalf("echo %q, %v", got, err)
	}

	// run has been watching SIGUSR1 since before it printed the address,
	// so the signal cannot end the test process.
	if err := syscall.Kill(os.Getpid(), syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	out := s.waitFor(func(out string) bool { return len(parseStats(t, out)) == 1 })
	if tab := parseStats(t, out)[0]; tab.messages != 1 || !strings.Contains(tab.header, "mode=round-robin") {
		t.Errorf("SIGUSR1 stats: %+v\n%s", tab, out)
	}

	c.Close()
	out = s.stop()
	if n := len(parseStats(t, out)); n != 2 {
		t.Errorf("want the SIGUSR1 table and the exit table, got %d tables:\n%s", n, out)
	}
}

// -lock locks the loops to threads, whose sleeps the stats then count.
func TestEchoLock(t *testing.T) {
	for _, lock := range []bool{false, true} {
		args := []string{"-addr", "text://127.0.0.1:0", "-count", "2"}
		if lock {
			args = append(args, "-lock")
		}
		s := startServer(t, args...)
		c := s.dial()
		if _, err := io.WriteString(c, "ping\n"); err != nil {
			t.Fatal(err)
		}
		if got, err := bufio.NewReader(c).ReadString('\n'); err != nil || got != "ping\n" {
			t.Fatalf("echo %q, %v", got, err)
		}
		c.Close()
		tabs := parseStats(t, s.stop())
		if len(tabs) != 1 {
			t.Fatalf("want the exit table, got %d tables", len(tabs))
		}
		if sw := tabs[0].switches; (sw > 0) != lock {
			t.Errorf("-lock=%v: switches %d", lock, sw)
		}
	}
}

func TestEchoFrame(t *testing.T) {
	s := startServer(t, "-addr", "frame://127.0.0.1:0", "-count", "1")
	c := s.dial()
	msgs := [][]byte{[]byte("hello"), {}, bytes.Repeat([]byte{0, '\n', 0xff}, 30000)}
	var wire []byte
	for _, m := range msgs {
		wire = protocol.Frame{}.Encode(wire, m)
	}
	go c.Write(wire) // the big frame may not fit the socket buffers before we read
	for _, m := range msgs {
		var hdr [4]byte
		if _, err := io.ReadFull(c, hdr[:]); err != nil {
			t.Fatal(err)
		}
		n := binary.BigEndian.Uint32(hdr[:])
		if int(n) != 4+len(m) {
			t.Fatalf("frame length %d; want %d", n, 4+len(m))
		}
		got := make([]byte, n-4)
		if _, err := io.ReadFull(c, got); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, m) {
			t.Fatalf("frame of %d bytes came back different", len(m))
		}
	}
	c.Close()
	if tabs := parseStats(t, s.stop()); len(tabs) != 1 || tabs[0].messages != uint64(len(msgs)) {
		t.Errorf("stats at exit: %+v", tabs)
	}
}

func TestEchoRawUnixWithProto(t *testing.T) {
	// A short directory: Unix socket paths are limited to about 100 bytes.
	dir, err := os.MkdirTemp("", "echo")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	path := filepath.Join(dir, "s")
	s := startServer(t, "-addr", "unix://"+path, "-proto", "text", "-count", "1", "-mode", "shared")
	if s.url != "unix://"+path {
		t.Fatalf("bound address %q; want unix://%s", s.url, path)
	}
	c := s.dial()
	io.WriteString(c, "one\r\ntwo\n")
	r := bufio.NewReader(c)
	for _, want := range []string{"one\n", "two\n"} {
		if got, err := r.ReadString('\n'); err != nil || got != want {
			t.Fatalf("echo %q, %v; want %q", got, err, want)
		}
	}
	c.Close()
	s.stop()
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket file left behind: %v", err)
	}
}

func TestEchoRawTCP(t *testing.T) {
	s := startServer(t, "-addr", "tcp://127.0.0.1:0", "-count", "1", "-mode", "leastconns")
	c := s.dial()
	want := bytes.Repeat([]byte("raw bytes, no framing "), 100)
	go c.Write(want)
	got := make([]byte, len(want))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("raw echo differs")
	}
	c.Close()
	s.stop()
}

func TestFlags(t *testing.T) {
	tests := []struct {
		args    []string
		check   func(*herd.Worker) bool
		wantErr string
	}{
		{args: nil, check: func(w *herd.Worker) bool {
			return w.Addr == "tcp://127.0.0.1:9000" && w.Count == 0 && w.ReusePort && w.Protocol == nil && w.MaxConns == 0
		}},
		{args: []string{"-mode", "shared", "-count", "3", "-max-conns", "100"}, check: func(w *herd.Worker) bool {
			return !w.ReusePort && w.Accept == herd.AcceptShared && w.Count == 3 && w.MaxConns == 100
		}},
		{args: []string{"-mode", "roundrobin"}, check: func(w *herd.Worker) bool { return !w.ReusePort && w.Accept == herd.AcceptRoundRobin }},
		{args: []string{"-mode", "leastconns"}, check: func(w *herd.Worker) bool { return !w.ReusePort && w.Accept == herd.AcceptLeastConns }},
		{args: []string{"-proto", "frame"}, check: func(w *herd.Worker) bool { return w.Protocol == protocol.Frame{} }},
		{args: []string{"-addr", "127.0.0.1:1", "-proto", "text"}, check: func(w *herd.Worker) bool { return w.Protocol == protocol.Text{} }},
		{args: []string{"-addr", "unix:///tmp/x", "-proto", "raw"}, check: func(w *herd.Worker) bool { return w.Protocol == nil }},
		{args: []string{"-addr", "text://:1", "-proto", "text"}, check: func(w *herd.Worker) bool { return w.Protocol == nil }},
		{args: []string{"-addr", "text://:1", "-proto", "frame"}, wantErr: "conflicts"},
		{args: []string{"-addr", "frame://:1", "-proto", "raw"}, wantErr: "conflicts"},
		{args: []string{"-proto", "json"}, wantErr: "-proto"},
		{args: []string{"-mode", "random"}, wantErr: "-mode"},
		{args: []string{"-count", "x"}, wantErr: "invalid value"},
		{args: []string{"extra"}, wantErr: "unexpected"},
	}
	for _, tt := range tests {
		w, err := newWorker(tt.args, io.Discard)
		if tt.wantErr != "" {
			var ue usageError
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !errors.As(err, &ue) {
				t.Errorf("newWorker(%q) = %v; want a usage error containing %q", tt.args, err, tt.wantErr)
			}
			continue
		}
		if err != nil || !tt.check(w) {
			t.Errorf("newWorker(%q) = %+v, %v", tt.args, w, err)
		}
	}
	if _, err := newWorker([]string{"-h"}, io.Discard); !errors.Is(err, flag.ErrHelp) {
		t.Errorf("-h: %v; want flag.ErrHelp", err)
	}
}

func TestRunBadAddress(t *testing.T) {
	err := run(context.Background(), []string{"-addr", "sctp://127.0.0.1:0"}, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "scheme") {
		t.Fatalf("run with an sctp address: %v; want an unknown scheme error", err)
	}
}

// A client that sends and reads nothing fills its send queue, and every
// echo after that is dropped: one log line per second at most (each with
// the count), not one per drop. (Before: 8,269 lines for one client.)
func TestEchoDropsLogOncePerSecond(t *testing.T) {
	s := startServer(t, "-addr", "tcp://127.0.0.1:0", "-count", "1")
	c := s.dial()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	start := time.Now()
	chunk := bytes.Repeat([]byte("x"), 64<<10)
	for time.Since(start) < 1500*time.Millisecond {
		if _, err := c.Write(chunk); err != nil {
			t.Fatal(err)
		}
	}
	elapsed := time.Since(start)
	time.Sleep(1100 * time.Millisecond) // the last report is due
	s.stop()
	lines := strings.Count(s.stderr.String(), "connection error")
	t.Logf("%d log lines in %v of drops", lines, elapsed)
	if lines == 0 || lines > int(elapsed/time.Second)+2 {
		t.Errorf("%d drop log lines in %v; want 1 to %d\n%s", lines, elapsed, int(elapsed/time.Second)+2, s.stderr)
	}
}

// The -dial client: what it reads goes to the server, the echoes come back,
// and it ends once its input ends and the server has answered.
func TestDialClient(t *testing.T) {
	s := startServer(t, "-addr", "text://127.0.0.1:0", "-count", "1")
	_, addr, _ := strings.Cut(s.url, "://")
	var out bytes.Buffer
	done := make(chan error, 1)
	go func() { done <- dial(addr, strings.NewReader("one\ntwo\n"), &out) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("dial did not end")
	}
	if out.String() != "one\ntwo\n" {
		t.Errorf("got %q", out.String())
	}
	if !strings.Contains(s.stdout.String(), fmt.Sprintf("echo: pid %d;", os.Getpid())) {
		t.Errorf("no pid line in %q", s.stdout.String())
	}
}
