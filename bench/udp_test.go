//go:build linux

package bench

import (
	"context"
	"encoding/binary"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/seed358e4494/herd"
	"github.com/seed358e4494/herd/bench/internal/harness"
)

// BenchmarkUDPEcho: 64-byte datagrams echoed by herd's udp:// worker (2
// loops, a socket each in a SO_REUSEPORT group) and by the standard way in
// Go, a goroutine reading and writing a net.UDPConn, with as many sockets
// (and goroutines) in a SO_REUSEPORT group. 16 client sockets keep 16
// datagrams each in flight. One op is one datagram echoed. Reported:
// datagrams per second, and CPU per datagram of the whole process (the
// clients are the same for both, so the difference is the servers').
//
//	go test -run '^$' -bench UDPEcho -benchtime 2s -count 5
func BenchmarkUDPEcho(b *testing.B) {
	b.Run("herd", func(b *testing.B) {
		w := &herd.Worker{Addr: "udp://127.0.0.1:0", Count: 2, Logger: slog.New(slog.DiscardHandler),
			OnPacket: func(p *herd.Packet, msg []byte) { p.Reply(msg) }}
		if err := w.Listen(); err != nil {
			b.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- w.Run(ctx) }()
		defer func() { cancel(); <-done }()
		udpLoad(b, w.ListenAddr().String())
	})
	b.Run("net.UDPConn", func(b *testing.B) {
		lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
			var err error
			c.Control(func(fd uintptr) { err = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1) })
			return err
		}}
		first, err := lc.ListenPacket(context.Background(), "udp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		second, err := lc.ListenPacket(context.Background(), "udp", first.LocalAddr().String())
		if err != nil {
			b.Fatal(err)
		}
		var wg sync.WaitGroup
		for _, c := range []net.PacketConn{first, second} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				buf := make([]byte, 2048)
				for {
					n, from, err := c.ReadFrom(buf)
					if err != nil {
						return
					}
					c.WriteTo(buf[:n], from)
				}
			}()
		}
		defer func() { first.Close(); second.Close(); wg.Wait() }()
		udpLoad(b, first.LocalAddr().String())
	})
}

// udpLoad echoes b.N datagrams through the server at addr and reports
// datagrams per second and process CPU per datagram. A datagram lost
// (none should be on loopback with this window) is resent after 200ms and
// counted.
func udpLoad(b *testing.B, addr string) {
	const sources, window = 16, 16
	conns := make([]net.Conn, sources)
	for i := range conns {
		c, err := net.Dial("udp", addr)
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		conns[i] = c
	}
	var lost atomic.Int64
	per := b.N / sources
	u0 := harness.SelfUsage()
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	for i, c := range conns {
		n := per
		if i == 0 {
			n += b.N % sources
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			msg := make([]byte, 64)
			buf := make([]byte, 128)
			sent, got := 0, 0
			for got < n {
				for sent < n && sent-got < window {
					binary.BigEndian.PutUint64(msg, uint64(sent))
					c.Write(msg)
					sent++
				}
				c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
				if _, err := c.Read(buf); err != nil {
					lost.Add(int64(sent - got))
					sent = got // resend what was in flight
					continue
				}
				got++
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	u := harness.SelfUsage().Sub(u0)
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "datagrams/s")
	b.ReportMetric(float64(u.CPU.Nanoseconds())/1e3/float64(b.N), "process-cpu-µs/op")
	b.ReportMetric(float64(lost.Load()), "lost")
}
