//go:build linux

package bench

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/panjf2000/gnet/v2"
	"golang.org/x/sys/unix"

	"github.com/seed358e4494/herd"
	"github.com/seed358e4494/herd/bench/internal/cfloor"
)

// BenchmarkUDPEcho: 64-byte datagrams echoed by a server in a process of
// its own (this test binary re-executed, GOMAXPROCS=2), the load coming
// from this one: 16 client sockets keep 16 datagrams each in flight. One
// op is one datagram echoed. The servers, two loops (threads, goroutines)
// each with a socket of their own in a SO_REUSEPORT group on one port:
//
//   - herd: a udp:// worker (recvmmsg, and one sendmmsg per batch of
//     replies);
//   - net.UDPConn: the standard way in Go, a goroutine reading and writing
//     each socket;
//   - gnet: gnet v2's udp:// with two loops;
//   - cfloor: the floor, in C: threads blocking in recvmmsg and echoing
//     each batch with one sendmmsg (Linux with cgo).
//
// Reported: datagrams per second, the server's CPU per datagram
// (srv-µs/op, user and system time from /proc), and datagrams lost (none
// should be on loopback with this window; each is sent again after 200ms).
//
//	go test -run '^$' -bench UDPEcho -benchtime 2s -count 5
func BenchmarkUDPEcho(b *testing.B) {
	for _, kind := range []string{"herd", "net.UDPConn", "gnet", "cfloor"} {
		if kind == "cfloor" && !cfloor.Available {
			continue
		}
		b.Run(kind, func(b *testing.B) {
			child := startChild(b, kind, udpServerCmd(kind))
			line, err := child.firstLine()
			if err != nil {
				b.Fatal(err)
			}
			udpLoad(b, strings.TrimSpace(line), child.pid)
		})
	}
}

// envUDPServer makes the test binary a UDP echo server of the kind it
// names (udpServerMain).
const envUDPServer = "HERD_BENCH_UDP_SERVER"

func udpServerCmd(kind string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], clientArgs...)
	cmd.Env = append(os.Environ(), envUDPServer+"="+kind, "GOMAXPROCS=2")
	return cmd
}

// udpServerMain is the child: it prints the address it serves, then serves
// until stdin closes.
func udpServerMain(kind string) int {
	addr, err := startUDPServer(kind)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Println(addr)
	io.Copy(io.Discard, os.Stdin)
	return 0
}

func startUDPServer(kind string) (string, error) {
	switch kind {
	case "herd":
		w := &herd.Worker{Addr: "udp://127.0.0.1:0", Count: 2, Logger: slog.New(slog.DiscardHandler),
			OnPacket: func(p *herd.Packet, msg []byte) { p.Reply(msg) }}
		if err := w.Listen(); err != nil {
			return "", err
		}
		go w.Run(context.Background())
		return w.ListenAddr().String(), nil
	case "net.UDPConn":
		lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
			var err error
			c.Control(func(fd uintptr) { err = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1) })
			return err
		}}
		first, err := lc.ListenPacket(context.Background(), "udp", "127.0.0.1:0")
		if err != nil {
			return "", err
		}
		second, err := lc.ListenPacket(context.Background(), "udp", first.LocalAddr().String())
		if err != nil {
			return "", err
		}
		for _, c := range []net.PacketConn{first, second} {
			go func() {
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
		return first.LocalAddr().String(), nil
	case "gnet":
		return startGnetUDP()
	case "cfloor":
		return cfloor.StartUDP(2)
	}
	return "", fmt.Errorf("no UDP server %q", kind)
}

// gnetUDP echoes each datagram: gnet hands one per OnTraffic, and Write
// sends to its sender.
type gnetUDP struct {
	gnet.BuiltinEventEngine
	booted chan struct{}
}

func (g *gnetUDP) OnBoot(gnet.Engine) gnet.Action {
	close(g.booted)
	return gnet.None
}

func (g *gnetUDP) OnTraffic(c gnet.Conn) gnet.Action {
	msg, _ := c.Next(-1)
	c.Write(msg)
	return gnet.None
}

// startGnetUDP runs gnet on a free port (gnet takes an address, not a
// socket: a port found free may be taken before it binds, so it tries
// again).
func startGnetUDP() (string, error) {
	var lastErr error
	for range 3 {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			return "", err
		}
		addr := pc.LocalAddr().String()
		pc.Close()
		g := &gnetUDP{booted: make(chan struct{})}
		done := make(chan error, 1)
		go func() {
			done <- gnet.Run(g, "udp://"+addr, gnet.WithMulticore(true), gnet.WithNumEventLoop(2), gnet.WithReusePort(true))
		}()
		select {
		case <-g.booted:
			return addr, nil
		case lastErr = <-done:
		case <-time.After(5 * time.Second):
			return "", fmt.Errorf("gnet did not boot")
		}
	}
	return "", lastErr
}

// udpLoad echoes b.N datagrams through the server at addr, run by process
// pid, and reports datagrams per second and the server's CPU per datagram.
// A datagram lost is resent after 200ms and counted.
func udpLoad(b *testing.B, addr string, pid int) {
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
	// One round trip per socket first: the server is up and every path warm.
	for _, c := range conns {
		c.SetDeadline(time.Now().Add(5 * time.Second))
		c.Write(make([]byte, 64))
		if _, err := c.Read(make([]byte, 128)); err != nil {
			b.Fatalf("no echo from %s: %v", addr, err)
		}
	}
	var lost atomic.Int64
	per := b.N / sources
	cpu0 := procCPU(pid)
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
	cpu := procCPU(pid) - cpu0
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "datagrams/s")
	b.ReportMetric(float64(cpu.Nanoseconds())/1e3/float64(b.N), "srv-µs/op")
	b.ReportMetric(float64(lost.Load()), "lost")
}
