//go:build linux && cgo

package cfloor

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	nethttp "net/http"
	"os"
	"strings"
	"testing"
	"time"
)

func start(t *testing.T, loops int, http bool) *Server {
	t.Helper()
	s, err := Start(loops, http)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Stop)
	return s
}

func dial(t *testing.T, s *Server) *net.TCPConn {
	t.Helper()
	c, err := net.Dial("tcp", s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(20 * time.Second))
	return c.(*net.TCPConn)
}

func waitActive(t *testing.T, s *Server, n int) {
	t.Helper()
	end := time.Now().Add(5 * time.Second)
	for s.Active() != n {
		if time.Now().After(end) {
			t.Fatalf("%d connections open, want %d", s.Active(), n)
		}
		time.Sleep(time.Millisecond)
	}
}

// A client that writes 32 MiB and starts reading late: the socket buffers
// fill, the server's writes come up short, and the rest must arrive in
// order, whole. (Not with a tiny SO_RCVBUF: on loopback that stalls any
// server in TCP's zero-window probing.)
func TestEchoShortWrites(t *testing.T) {
	s := start(t, 2, false)
	c := dial(t, s)
	const total = 32 << 20
	msg := make([]byte, total)
	for i := range msg {
		msg[i] = byte(i*7 + i>>11)
	}
	errc := make(chan error, 1)
	go func() {
		_, err := c.Write(msg)
		errc <- err
	}()
	time.Sleep(100 * time.Millisecond) // let the socket buffers fill
	got := make([]byte, total)
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, msg) {
		t.Fatal("echo differs")
	}
	var def, work uint64
	for _, l := range s.Loops() {
		def += l.Deferred
		work += l.Work
	}
	if def == 0 {
		t.Error("no write came up short: the EPOLLOUT path did not run")
	}
	t.Logf("%d reads, %d short writes", work, def)
}

func TestEchoManyConns(t *testing.T) {
	s := start(t, 4, false)
	var conns []*net.TCPConn
	for i := 0; i < 64; i++ {
		conns = append(conns, dial(t, s))
	}
	waitActive(t, s, 64)
	for round := 0; round < 20; round++ {
		for i, c := range conns {
			m := fmt.Sprintf("conn %d round %d;", i, round)
			if _, err := c.Write([]byte(m)); err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, len(m))
			if _, err := io.ReadFull(c, buf); err != nil || string(buf) != m {
				t.Fatalf("got %q, %v; want %q", buf, err, m)
			}
		}
	}
	var acc, work uint64
	used := 0
	for _, l := range s.Loops() {
		acc += l.Accepted
		work += l.Work
		if l.Accepted > 0 {
			used++
		}
	}
	if acc != 64 || work < 64*20 || used < 2 {
		t.Errorf("counters: %+v", s.Loops())
	}
	// Disconnects: a close, a reset, a half-close after a message, which
	// is echoed before the server closes on the end of stream.
	conns[0].Close()
	conns[1].SetLinger(0)
	conns[1].Write([]byte("x"))
	conns[1].Close()
	conns[2].Write([]byte("tail"))
	conns[2].CloseWrite()
	waitActive(t, s, 61)
	if b, err := io.ReadAll(conns[2]); string(b) != "tail" || err != nil {
		t.Errorf("half-closed: %q, %v", b, err)
	}
}

func hello(closing bool) string {
	h := "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nDate: DATE\r\nContent-Length: 13\r\n"
	if closing {
		h += "Connection: close\r\n"
	}
	return h + "\r\nHello, World!"
}

const req = "GET /hello HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"

// readAnswers reads n answers and checks them, the date against the clock.
func readAnswers(t *testing.T, r *bufio.Reader, n int, closing bool) {
	t.Helper()
	want := hello(closing)
	for i := 0; i < n; i++ {
		buf := make([]byte, len(want)-len("DATE")+len(nethttp.TimeFormat))
		if _, err := io.ReadFull(r, buf); err != nil {
			t.Fatalf("answer %d: %v", i, err)
		}
		got := string(buf)
		j := strings.Index(got, "Date: ") + len("Date: ")
		date, err := time.Parse(nethttp.TimeFormat, got[j:j+len(nethttp.TimeFormat)])
		if err != nil || time.Since(date).Abs() > 5*time.Second {
			t.Fatalf("answer %d: date %q: %v", i, got[j:j+len(nethttp.TimeFormat)], err)
		}
		if got = got[:j] + "DATE" + got[j+len(nethttp.TimeFormat):]; got != want {
			t.Fatalf("answer %d:\n%q\nwant\n%q", i, got, want)
		}
	}
}

func TestHTTP(t *testing.T) {
	s := start(t, 2, true)

	// Keep-alive, pipelined, split at every byte boundary over writes.
	c := dial(t, s)
	r := bufio.NewReader(c)
	c.Write([]byte(strings.Repeat(req, 16)))
	readAnswers(t, r, 16, false)
	all := strings.Repeat(req, 3)
	for cut := 1; cut < len(all); cut += 7 {
		c.Write([]byte(all[:cut]))
		time.Sleep(time.Millisecond)
		c.Write([]byte(all[cut:]))
		readAnswers(t, r, 3, false)
	}
	// One byte at a time.
	for i := 0; i < len(req); i++ {
		c.Write([]byte{req[i]})
	}
	readAnswers(t, r, 1, false)

	// Connection: close in any case; nothing after it is answered; the
	// server closes.
	c2 := dial(t, s)
	c2.Write([]byte(req + "GET / HTTP/1.1\r\ncOnNeCtIoN: ClOsE\r\n\r\n" + req))
	r2 := bufio.NewReader(c2)
	readAnswers(t, r2, 1, false)
	readAnswers(t, r2, 1, true)
	if b, err := r2.ReadByte(); err != io.EOF {
		t.Fatalf("after close: %q, %v", b, err)
	}

	// Many pipelined requests in one read: the batch outgrows any fixed
	// buffer and the socket, and goes out through EPOLLOUT.
	c3 := dial(t, s)
	const many = 4000
	go c3.Write([]byte(strings.Repeat("GET / HTTP/1.1\r\n\r\n", many)))
	time.Sleep(20 * time.Millisecond)
	readAnswers(t, bufio.NewReader(c3), many, false)

	c.Close()
	c3.Close()
	waitActive(t, s, 0)
}

// Stop with connections open, a write pending and a request half read:
// nothing leaks a thread or a descriptor (run with -count to see).
func TestStopBusy(t *testing.T) {
	fds0 := openFDs(t)
	for _, http := range []bool{false, true} {
		s, err := Start(3, http)
		if err != nil {
			t.Fatal(err)
		}
		var cs []net.Conn
		for i := 0; i < 10; i++ {
			c, err := net.Dial("tcp", s.Addr())
			if err != nil {
				t.Fatal(err)
			}
			cs = append(cs, c)
			c.Write([]byte("GET / HT"))
		}
		big, _ := net.Dial("tcp", s.Addr())
		go big.Write(make([]byte, 8<<20))
		time.Sleep(20 * time.Millisecond)
		s.Stop()
		s.Stop()
		if s.Loops() != nil || s.Active() != 0 {
			t.Error("counters after Stop")
		}
		for _, c := range append(cs, big) {
			c.SetDeadline(time.Now().Add(5 * time.Second))
			if _, err := io.Copy(io.Discard, c); err != nil && !strings.Contains(err.Error(), "reset") {
				t.Errorf("after Stop: %v", err)
			}
			c.Close()
		}
		if _, err := net.DialTimeout("tcp", s.Addr(), time.Second); err == nil {
			t.Error("listener still open after Stop")
		}
	}
	if fds := openFDs(t); fds > fds0 {
		t.Errorf("%d descriptors open after Stop, %d before", fds, fds0)
	}
}

func openFDs(t *testing.T) int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

func TestStartBad(t *testing.T) {
	if _, err := Start(0, false); err == nil {
		t.Error("Start(0) did not fail")
	}
}

// TestUDPEcho: the UDP floor echoes each datagram to its sender, from each
// of its sockets (the group hashes the senders over them).
func TestUDPEcho(t *testing.T) {
	addr, err := StartUDP(2)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 8 {
		c, err := net.Dial("udp", addr)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		msg := []byte(fmt.Sprintf("datagram %d", i))
		if _, err := c.Write(msg); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 64)
		n, err := c.Read(buf)
		c.Close()
		if err != nil || !bytes.Equal(buf[:n], msg) {
			t.Fatalf("sender %d: got %q, %v; want %q", i, buf[:n], err, msg)
		}
	}
}
