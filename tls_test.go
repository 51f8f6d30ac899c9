//go:build linux

package herd_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/seed358e4494/herd"
	"github.com/seed358e4494/herd/internal/herdtest"
	"github.com/seed358e4494/herd/internal/soak"
	"github.com/seed358e4494/herd/protocol"
)

// tlsEcho runs a TLS echo worker: raw (each read's plaintext back), or
// with a protocol.
func tlsEcho(t *testing.T, p protocol.Protocol, tune func(*herd.Worker)) (*herd.Worker, string, *tls.Config) {
	srv, cli := herdtest.TLSConfigs(t)
	w := &herd.Worker{Addr: "tcp://127.0.0.1:0", Count: 2, Protocol: p, TLS: srv, Logger: slog.New(slog.DiscardHandler),
		OnMessage: func(c *herd.Conn, msg []byte) { c.Send(msg) }}
	if tune != nil {
		tune(w)
	}
	return w, herdtest.Run(t, w), cli
}

func dialTLS(t *testing.T, addr string, cfg *tls.Config) *tls.Conn {
	t.Helper()
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(20 * time.Second))
	return c
}

// TestTLSEcho: TLS 1.2 and 1.3 clients of crypto/tls get back what they
// send: lines, a client writing one byte at a time, and 1 MiB (records of
// 16 KiB and more, both ways).
func TestTLSEcho(t *testing.T) {
	w, addr, cli := tlsEcho(t, protocol.Text{}, nil)
	for _, v := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		t.Run(tls.VersionName(v), func(t *testing.T) {
			cfg := cli.Clone()
			cfg.MinVersion, cfg.MaxVersion = v, v
			c := dialTLS(t, addr, cfg)
			if got := c.ConnectionState().Version; got != v {
				t.Fatalf("negotiated %s", tls.VersionName(got))
			}
			br := bufio.NewReader(c)
			for i := range 3 {
				line := fmt.Sprintf("line %d\n", i)
				io.WriteString(c, line)
				if got, err := br.ReadString('\n'); got != line || err != nil {
					t.Fatalf("echo %q, %v", got, err)
				}
			}
			// One byte per write: one record per byte.
			for _, b := range []byte("byte by byte\n") {
				c.Write([]byte{b})
			}
			if got, err := br.ReadString('\n'); got != "byte by byte\n" || err != nil {
				t.Fatalf("echo %q, %v", got, err)
			}
			// 1 MiB in one line: many 16 KiB records each way.
			big := make([]byte, 1<<20)
			rand.Read(big)
			for i := range big {
				if big[i] == '\n' || big[i] == '\r' { // a "\r" before the "\n" is the line's end too
					big[i] = 'x'
				}
			}
			go func() { c.Write(append(big, '\n')) }()
			got, err := br.ReadBytes('\n')
			if err != nil || !bytes.Equal(got[:len(got)-1], big) {
				t.Fatalf("1 MiB echo: %d bytes, %v", len(got), err)
			}
		})
	}
	var done uint64
	for _, l := range w.Stats().Loops {
		done += l.TLSHandshakes
	}
	if done != 2 {
		t.Errorf("%d handshakes counted, want 2", done)
	}
}

// TestTLSBadClients: garbage instead of a ClientHello, an SSLv2-looking
// hello, a version the server does not take, and a client that dribbles
// its hello past the handshake timeout: each is closed and counted; no
// callback runs for them; the goroutines they took are gone after.
func TestTLSBadClients(t *testing.T) {
	var connects, closes atomic.Int32
	w, addr, cli := tlsEcho(t, nil, func(w *herd.Worker) {
		w.HandshakeTimeout = 300 * time.Millisecond
		w.TLS.MinVersion = tls.VersionTLS13
		w.OnConnect = func(*herd.Conn) { connects.Add(1) }
		w.OnClose = func(*herd.Conn) { closes.Add(1) }
	})
	baseline := settledGoroutines(t, w, addr, cli)
	herdtest.WaitFor(t, "the warm-up client closed", func() bool { return closes.Load() == 1 })
	connects.Store(0)
	closes.Store(0)
	expectClosed := func(name string, c net.Conn) {
		t.Helper()
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.Copy(io.Discard, c); err != nil && !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("%s: %v, want the connection closed", name, err)
		}
	}
	for _, junk := range [][]byte{[]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), {0x80, 0x2e, 0x01, 0x00, 0x02}} {
		c, _ := net.Dial("tcp", addr)
		c.Write(junk)
		expectClosed(fmt.Sprintf("%q", junk), c)
		c.Close()
	}
	old := cli.Clone()
	old.MaxVersion = tls.VersionTLS12
	if c, err := tls.Dial("tcp", addr, old); err == nil {
		c.Close()
		t.Error("a TLS 1.2 client got through MinVersion TLS 1.3")
	}
	start := time.Now()
	slow, _ := net.Dial("tcp", addr)
	slow.Write([]byte{0x16, 0x03}) // the first bytes of a record, then nothing
	expectClosed("a dribbling client", slow)
	if took := time.Since(start); took < 250*time.Millisecond || took > 3*time.Second {
		t.Errorf("the dribbling client was closed after %v, want about the 300ms timeout", took)
	}
	slow.Close()
	failedCount := func() (n uint64) {
		for _, l := range w.Stats().Loops {
			n += l.TLSFailed
		}
		return n
	}
	herdtest.WaitFor(t, "the failed handshakes counted", func() bool { return failedCount() >= 4 })
	if n := failedCount(); n != 4 {
		t.Errorf("%d failed handshakes counted, want 4", n)
	}
	if connects.Load() != 0 || closes.Load() != 0 {
		t.Errorf("OnConnect ran %d times, OnClose %d, for connections that never completed a handshake", connects.Load(), closes.Load())
	}
	waitGoroutines(t, baseline)
}

// TestTLSParallelHandshakes: 1,000 handshakes at once (250 without
// HERD_SOAK), through a pool of 16: all complete, and then no handshake
// goroutine is left.
func TestTLSParallelHandshakes(t *testing.T) {
	w, addr, cli := tlsEcho(t, protocol.Text{}, func(w *herd.Worker) { w.MaxHandshakes = 16 })
	baseline := settledGoroutines(t, w, addr, cli)
	n := 1000
	if !soak.Enabled() {
		n = 250
	}
	var wg sync.WaitGroup
	var failed atomic.Int32
	conns := make(chan net.Conn, n)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", addr, cli)
			if err != nil {
				failed.Add(1)
				return
			}
			c.SetDeadline(time.Now().Add(20 * time.Second))
			io.WriteString(c, "hi\n")
			if got, err := bufio.NewReader(c).ReadString('\n'); got != "hi\n" || err != nil {
				failed.Add(1)
			}
			conns <- c
		}()
	}
	wg.Wait()
	close(conns)
	for c := range conns {
		c.Close()
	}
	if f := failed.Load(); f != 0 {
		t.Errorf("%d of %d TLS clients failed", f, n)
	}
	waitGoroutines(t, baseline)
}

// TestTLSCloseNotify: a graceful close sends close_notify, which the
// client reads as a clean end of stream.
func TestTLSCloseNotify(t *testing.T) {
	_, addr, cli := tlsEcho(t, protocol.Text{}, func(w *herd.Worker) {
		w.OnMessage = func(c *herd.Conn, msg []byte) {
			c.Send(append(msg, " bye"...))
			c.Close()
		}
	})
	c := dialTLS(t, addr, cli)
	io.WriteString(c, "hello\n")
	got, err := io.ReadAll(c)
	if err != nil || string(got) != "hello bye\n" {
		t.Fatalf("got %q, %v; want the reply then a clean end (close_notify)", got, err)
	}
}

// waitGoroutines waits until no more goroutines run than baseline, and
// shows the others if some stay.
func waitGoroutines(t *testing.T, baseline int) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); runtime.NumGoroutine() > baseline; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines, %d before:\n%s", runtime.NumGoroutine(), baseline, buf[:runtime.Stack(buf, true)])
		}
	}
}

// settledGoroutines is the goroutine count once the worker runs and has
// served one TLS client (whose handshake goroutine has come and gone).
func settledGoroutines(t *testing.T, w *herd.Worker, addr string, cli *tls.Config) int {
	t.Helper()
	herdtest.WaitFor(t, "the loops", func() bool { return w.Loops() != nil })
	cfg := cli.Clone()
	cfg.MinVersion = tls.VersionTLS13
	c := dialTLS(t, addr, cfg)
	io.WriteString(c, "warm-up\n")
	bufio.NewReader(c).ReadString('\n')
	c.Close()
	time.Sleep(100 * time.Millisecond)
	return runtime.NumGoroutine()
}

// TestTLSReloadAndScale: a certificate changed through GetCertificate is
// what the next client sees, with no restart; TLS connections live through
// Scale 2 → 1 → 2; and a client that reads slowly gets every byte of 8 MiB
// written with Write (owed bytes over TLS, backpressure on the way).
func TestTLSReloadAndScale(t *testing.T) {
	t.Parallel()
	srv1, cli1 := herdtest.TLSConfigs(t)
	srv2, cli2 := herdtest.TLSConfigs(t)
	var current atomic.Pointer[tls.Certificate]
	current.Store(&srv1.Certificates[0])
	payload := bytes.Repeat([]byte("0123456789abcdef"), 1<<19) // 8 MiB
	w, addr, _ := tlsEcho(t, protocol.Text{}, func(w *herd.Worker) {
		w.TLS = &tls.Config{GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return current.Load(), nil }}
		w.OnMessage = func(c *herd.Conn, msg []byte) {
			if string(msg) == "big" {
				c.Write(payload)
				return
			}
			c.Send(msg)
		}
	})
	a := dialTLS(t, addr, cli1)
	ar := bufio.NewReader(a)
	current.Store(&srv2.Certificates[0])
	if _, err := tls.Dial("tcp", addr, cli1); err == nil {
		t.Error("a client trusting only the old certificate connected after the reload")
	}
	b := dialTLS(t, addr, cli2)
	br := bufio.NewReader(b)
	for _, n := range []int{1, 2} {
		if err := w.Scale(context.Background(), n); err != nil {
			t.Fatal(err)
		}
		for _, c := range []struct {
			conn net.Conn
			r    *bufio.Reader
		}{{a, ar}, {b, br}} {
			fmt.Fprintf(c.conn, "after scale %d\n", n)
			if got, err := c.r.ReadString('\n'); err != nil || got != fmt.Sprintf("after scale %d\n", n) {
				t.Fatalf("after Scale(%d): %q, %v", n, got, err)
			}
		}
	}
	io.WriteString(a, "big\n")
	got := make([]byte, len(payload))
	for off := 0; off < len(got); {
		n, err := ar.Read(got[off:min(off+64<<10, len(got))])
		if err != nil {
			t.Fatalf("after %d bytes: %v", off, err)
		}
		off += n
		time.Sleep(time.Millisecond) // a slow reader: about 64 KiB per millisecond at most
	}
	if !bytes.Equal(got, payload) {
		t.Fatal("the 8 MiB reply differs")
	}
}

// TestTLSHalfClose: a client that sends a line and half-closes the TCP
// stream (no close_notify) in one go gets its answer, then the end: the
// end that arrived with the last record is read, not waited for in vain
// (edge-triggered, it is not reported twice).
func TestTLSHalfClose(t *testing.T) {
	_, addr, cli := tlsEcho(t, protocol.Text{}, nil)
	for i := range 20 {
		raw, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		c := tls.Client(raw, cli)
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if err := c.Handshake(); err != nil {
			t.Fatal(err)
		}
		io.WriteString(c, "ping\n")
		raw.(*net.TCPConn).CloseWrite()
		got, err := io.ReadAll(c)
		raw.Close()
		if string(got) != "ping\n" || err != nil {
			t.Fatalf("client %d: got %q, %v; want the echo, then the end", i, got, err)
		}
	}
}

// writeSyscalls is how many write system calls (write, writev, sendto,
// sendmsg) the thread has made, from /proc; -1 where it cannot be read.
func writeSyscalls(tid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/self/task/%d/io", tid))
	if err != nil {
		return -1
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "syscw: "); ok {
			n, _ := strconv.Atoi(v)
			return n
		}
	}
	return -1
}

// TestTLSSendBatchesRecords: crypto/tls writes a Send as records, many
// small ones first on a fresh connection; they reach the socket in one
// write per 64 KiB batch, not one each. A 64 KiB Send made 11 writes
// before; it makes at most 2 (64 KiB of plaintext is a little more than
// 64 KiB of records). The client reads every byte, in order.
func TestTLSSendBatchesRecords(t *testing.T) {
	const size = 64 << 10
	sends := make(chan int, 1)
	_, addr, cli := tlsEcho(t, protocol.Text{}, func(w *herd.Worker) {
		w.Count, w.LockOSThread = 1, true // one thread: its writes are the loop's
		w.OnMessage = func(c *herd.Conn, msg []byte) {
			tid := herd.LoopThread(c.Loop())
			before := writeSyscalls(tid)
			c.SendRaw(bytes.Repeat(msg[:1], size)) // on the loop's thread: its writes are the Send's
			after := writeSyscalls(tid)
			if before < 0 || after < 0 {
				sends <- -1
				return
			}
			sends <- after - before
		}
	})
	c := dialTLS(t, addr, cli)
	io.WriteString(c, "x\n")
	writes := <-sends
	got := make([]byte, size)
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, bytes.Repeat([]byte("x"), size)) {
		t.Fatal("the reply differs from what was sent")
	}
	switch {
	case writes < 0:
		t.Skip("no per-thread write counts here (/proc/self/task/*/io)")
	case writes > 2:
		t.Errorf("a 64 KiB Send made %d write system calls, want at most 2", writes)
	}
	t.Logf("a 64 KiB Send: %d write system calls", writes)
}
