//go:build linux

package herd

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/seed358e4494/herd/internal/sock"
	"github.com/seed358e4494/herd/protocol"
)

// udpEcho is a udp:// worker that answers each datagram with itself.
func udpEcho(t *testing.T, count int, p protocol.Protocol) (*Worker, *running) {
	w := &Worker{Addr: "udp://127.0.0.1:0", Count: count, Protocol: p,
		OnPacket: func(pk *Packet, msg []byte) { pk.Reply(msg) }}
	return w, startWorker(t, w)
}

// TestUDPEcho: 100,000 datagrams from 8 sources, each numbered, are echoed
// back; the test counts what was lost (loopback at this rate should lose
// nothing) and checks that every echo is the datagram that was sent.
func TestUDPEcho(t *testing.T) {
	// Not parallel: it asserts no datagram lost, which holds only while
	// the loops are not starved by other tests (16 lost once beside them).
	w, r := udpEcho(t, 2, nil)
	if r.net != "udp" {
		t.Fatalf("ListenAddr network %q, want udp", r.net)
	}
	const sources, each, window = 8, 12500, 16
	var wg sync.WaitGroup
	lost := make([]int, sources)
	errs := make(chan error, sources)
	for s := range sources {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := net.Dial("udp", r.addr)
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			got := make([]bool, each)
			buf := make([]byte, 64)
			received, sent := 0, 0
			for received+lost[s] < each {
				// Keep at most window datagrams in flight: a moderate rate.
				for sent < each && sent-received-lost[s] < window {
					msg := binary.BigEndian.AppendUint32([]byte{byte(s)}, uint32(sent))
					c.Write(msg)
					sent++
				}
				c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
				n, err := c.Read(buf)
				if err != nil {
					// Nothing for half a second: what is in flight is lost.
					lost[s] += sent - received - lost[s]
					continue
				}
				if n != 5 || buf[0] != byte(s) {
					errs <- fmt.Errorf("source %d: echo %x", s, buf[:n])
					return
				}
				seq := binary.BigEndian.Uint32(buf[1:5])
				if seq >= uint32(sent) || got[seq] {
					errs <- fmt.Errorf("source %d: echo of %d, sent %d, seen before %v", s, seq, sent, seq < uint32(each) && got[seq])
					return
				}
				got[seq] = true
				received++
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	total := 0
	for _, n := range lost {
		total += n
	}
	var in []uint64
	for _, l := range w.Stats().Loops {
		in = append(in, l.MessagesIn)
	}
	t.Logf("%d datagrams from %d sources, %d lost; per loop %v", sources*each, sources, total, in)
	if total > 0 {
		t.Errorf("%d datagrams lost on loopback at a window of %d", total, window)
	}
	if got := sumStats(w).messages; got < sources*each {
		t.Errorf("Stats count %d datagrams in, want %d", got, sources*each)
	}
}

// TestUDPBadInput: a datagram over MaxPackageSize, and one the Protocol
// does not frame whole, are dropped and counted; the worker goes on.
func TestUDPBadInput(t *testing.T) {
	w := &Worker{Addr: "udp://127.0.0.1:0", Count: 1, MaxPackageSize: 1000, Protocol: protocol.Text{},
		OnPacket: func(pk *Packet, msg []byte) { pk.Reply(bytes.ToUpper(msg)) }}
	r := startWorker(t, w)
	c, err := net.Dial("udp", r.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write(bytes.Repeat([]byte("x"), 2000)) // over MaxPackageSize
	c.Write([]byte("no newline"))            // not one whole text message
	c.Write([]byte("two\nlines\n"))          // not one message either
	c.Write([]byte("hello\n"))
	buf := make([]byte, 100)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := c.Read(buf)
	if err != nil || string(buf[:n]) != "HELLO\n" {
		t.Fatalf("echo %q, %v", buf[:n], err)
	}
	if got := w.Stats().Loops[0].Oversize; got != 3 {
		t.Errorf("Oversize %d, want 3", got)
	}
}

// TestUDPSendTo: a loop sends to an address of the application's choice,
// from any goroutine; a TCP worker's loop refuses.
func TestUDPSendTo(t *testing.T) {
	peer, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	w, _ := udpEcho(t, 1, nil)
	waitFor(t, 5*time.Second, "loops", func() bool { return w.Loops() != nil })
	if err := w.Loops()[0].SendTo(peer.LocalAddr(), []byte("pushed")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 16)
	peer.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, from, err := peer.ReadFrom(buf)
	if err != nil || string(buf[:n]) != "pushed" || from.String() != w.ListenAddr().String() {
		t.Fatalf("got %q from %v (%v), want \"pushed\" from %v", buf[:n], from, err, w.ListenAddr())
	}

	tw := &Worker{Addr: "tcp://127.0.0.1:0", Count: 1}
	startWorker(t, tw)
	waitFor(t, 5*time.Second, "loops", func() bool { return tw.Loops() != nil })
	if err := tw.Loops()[0].SendTo(peer.LocalAddr(), []byte("x")); !errors.Is(err, ErrNotDatagram) {
		t.Errorf("SendTo on a TCP worker: %v, want ErrNotDatagram", err)
	}
	if err := (&Worker{Addr: "udp://127.0.0.1:0", Accept: AcceptRoundRobin}).Listen(); err == nil {
		t.Error("a udp:// worker with a dispatch mode listened")
	}
}

// TestUDPScale: the sockets of loops that leave go to the loops that stay,
// so datagrams keep being answered through Scale 4 → 1 → 3.
func TestUDPScale(t *testing.T) {
	w, r := udpEcho(t, 4, nil)
	waitFor(t, 5*time.Second, "loops", func() bool { return w.Loops() != nil })
	conns := dialUDP(t, r.addr, 32)
	echoAll := func(when string) {
		t.Helper()
		buf := make([]byte, 64)
		for i, c := range conns {
			msg := fmt.Sprintf("%s %d", when, i)
			c.Write([]byte(msg))
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			n, err := c.Read(buf)
			if err != nil || string(buf[:n]) != msg {
				t.Fatalf("%s: source %d: %q, %v", when, i, buf[:n], err)
			}
		}
	}
	echoAll("before")
	for _, n := range []int{1, 3} {
		if err := w.Scale(context.Background(), n); err != nil {
			t.Fatal(err)
		}
		echoAll(fmt.Sprintf("after Scale(%d)", n))
	}
}

// TestUDPKernelDrops: a flood at a loop whose OnPacket is slow overflows
// its socket's receive buffer. The drops Stats reports are the kernel's:
// exactly the sockets' own counters (SO_MEMINFO), with what was read they
// make up every datagram sent, and they are within 5% of the growth of Udp
// RcvbufErrors in /proc/net/snmp. Cases: one loop; two loops, Scale(1)
// half-way, which moves a socket with its count to the loop that stays
// (counted once); one loop kept from its first read until the flood is
// over (the kernel stamps datagrams only once the loop has asked it to,
// and its next stamp brings what it dropped before).
//
// RcvbufErrors counts for the whole network namespace: another process's
// UDP socket overflowing during the flood (another package's tests run
// at the same time, a resolver under load) adds to it and fails this test.
func TestUDPKernelDrops(t *testing.T) {
	for _, tc := range []struct {
		name           string
		count, senders int
		flood          int
		scaleTo        int // half-way through the flood; 0: no Scale
		block          bool
	}{
		{"slow handler", 1, 1, 200_000, 0, false},
		{"socket moved by Scale", 2, 8, 100_000, 1, false},
		{"before the first read", 1, 1, 20_000, 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			last := make([]atomic.Int64, tc.senders) // the last marker read, per sender
			w := &Worker{Addr: "udp://127.0.0.1:0", Count: tc.count, ReusePort: true, OnPacket: func(pk *Packet, msg []byte) {
				var s, n int
				if _, err := fmt.Sscanf(string(msg), "end %d %d", &s, &n); err == nil {
					last[s].Store(int64(n))
					return
				}
				time.Sleep(20 * time.Microsecond) // a slow handler: far slower than the senders
			}}
			r := startWorker(t, w)
			waitFor(t, 5*time.Second, "loops", func() bool { return w.Loops() != nil })
			loops := w.Loops() // those Scale takes away too
			w.mu.Lock()
			fds := append([]int(nil), w.listeners...)
			w.mu.Unlock()
			for _, fd := range fds {
				// A small buffer (the kernel doubles it) that drains in a
				// moment.
				if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 64<<10); err != nil {
					t.Fatal(err)
				}
			}
			gate := make(chan struct{})
			if tc.block {
				blocked := make(chan struct{})
				loops[0].Post(func() { close(blocked); <-gate })
				<-blocked
			}
			conns := dialUDP(t, r.addr, tc.senders)
			before := udpRcvbufErrors(t)
			start := time.Now()
			payload := bytes.Repeat([]byte("x"), 32)
			for i := range tc.flood {
				if _, err := conns[i%len(conns)].Write(payload); err != nil {
					t.Fatal(err)
				}
				if i == tc.flood/2 && tc.scaleTo > 0 {
					if err := w.Scale(context.Background(), tc.scaleTo); err != nil {
						t.Fatal(err)
					}
				}
			}
			took := time.Since(start)
			close(gate)
			// The kernel reports its drop count with the datagrams it
			// queues: a datagram queued after the last drop brings the
			// final count. Each sender sends numbered markers until the
			// last one it sent is read: those before it were read or
			// dropped before it was queued.
			markers := make([]int, len(conns))
			deadline := time.Now().Add(30 * time.Second)
			for {
				done := true
				for s, c := range conns {
					if markers[s] > 0 && last[s].Load() == int64(markers[s]) {
						continue
					}
					done = false
					markers[s]++
					fmt.Fprintf(c, "end %d %d", s, markers[s])
				}
				if done {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("markers not read in 30s: sent %v", markers)
				}
				time.Sleep(100 * time.Millisecond)
			}
			sent := uint64(tc.flood)
			for _, n := range markers {
				sent += uint64(n)
			}
			var read, drops uint64
			count := func() {
				read, drops = 0, 0
				for _, l := range loops {
					s := l.stats()
					read += s.MessagesIn
					drops += s.KernelDrops
				}
			}
			// Another loop may still be handing over datagrams it read
			// before the last marker.
			for end := time.Now().Add(5 * time.Second); time.Now().Before(end); time.Sleep(time.Millisecond) {
				if count(); read+drops >= sent {
					break
				}
			}
			delta := udpRcvbufErrors(t) - before
			var own uint64
			for _, fd := range fds {
				own += uint64(sock.Drops(fd))
			}
			for _, l := range loops {
				s := l.stats()
				t.Logf("loop %d: %d read, %d dropped", s.Index, s.MessagesIn, s.KernelDrops)
			}
			t.Logf("%d datagrams in %v and %d markers sent: %d read, %d dropped by the kernel (Stats), sockets' counter %d, RcvbufErrors +%d",
				tc.flood, took.Round(time.Millisecond), sent-uint64(tc.flood), read, drops, own, delta)
			if drops < uint64(tc.flood)/2 {
				t.Fatalf("KernelDrops %d: the flood of %d did not overflow the socket", drops, tc.flood)
			}
			if drops != own {
				t.Errorf("KernelDrops %d, the sockets' counter %d", drops, own)
			}
			if read+drops != sent {
				t.Errorf("read %d + dropped %d = %d, sent %d", read, drops, read+drops, sent)
			}
			if diff := float64(drops) - float64(delta); diff > 0.05*float64(delta) || -diff > 0.05*float64(delta) {
				t.Errorf("KernelDrops %d, RcvbufErrors grew by %d: more than 5%% apart", drops, delta)
			}
		})
	}
}

// udpRcvbufErrors reads Udp RcvbufErrors from /proc/net/snmp: datagrams
// dropped on a full receive buffer, on every UDP socket of the network
// namespace.
func udpRcvbufErrors(t *testing.T) uint64 {
	t.Helper()
	b, err := os.ReadFile("/proc/net/snmp")
	if err != nil {
		t.Skipf("no /proc/net/snmp: %v", err)
	}
	var names []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || f[0] != "Udp:" {
			continue
		}
		if names == nil {
			names = f
			continue
		}
		for i, name := range names {
			if name == "RcvbufErrors" && i < len(f) {
				n, err := strconv.ParseUint(f[i], 10, 64)
				if err != nil {
					t.Fatal(err)
				}
				return n
			}
		}
	}
	t.Fatal("no Udp RcvbufErrors in /proc/net/snmp")
	return 0
}

// dialUDP opens n UDP sockets connected to addr, closed when the test ends.
func dialUDP(t *testing.T, addr string, n int) []net.Conn {
	t.Helper()
	conns := make([]net.Conn, n)
	for i := range conns {
		c, err := net.Dial("udp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		conns[i] = c
	}
	return conns
}
