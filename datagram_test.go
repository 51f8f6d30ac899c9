//go:build linux

package herd

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

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
	conns := make([]net.Conn, 32)
	for i := range conns {
		c, err := net.Dial("udp", r.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		conns[i] = c
	}
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
