package herd

import (
	"context"
	"io"
	"log/slog"
	"net"
	"sync"
	"testing"

	"github.com/seed358e4494/herd/protocol"
)

// BenchmarkEcho measures 64-byte ping-pong through the loop, with the client
// in the same process: ns/op is one round trip, allocs/op what the server
// and client allocate per message (the client allocates nothing itself).
// Compare with BenchmarkEchoStdNet, goroutine-per-connection net.
//
//	go test -run '^$' -bench Echo -benchmem -count 5
func BenchmarkEcho(b *testing.B) {
	for _, tc := range []struct {
		name  string
		proto protocol.Protocol
	}{{"raw", nil}, {"frame", protocol.Frame{}}} {
		b.Run(tc.name, func(b *testing.B) {
			w := &Worker{Addr: "tcp://127.0.0.1:0", Count: 2, ReusePort: true, Protocol: tc.proto, Logger: slog.New(slog.DiscardHandler)}
			w.OnMessage = func(c *Conn, msg []byte) { c.Send(msg) }
			if err := w.Listen(); err != nil {
				b.Fatal(err)
			}
			ctx, stop := context.WithCancel(context.Background())
			done := make(chan error)
			go func() { done <- w.Run(ctx) }()
			msg := make([]byte, 64)
			if tc.proto != nil {
				msg = tc.proto.Encode(nil, make([]byte, 60))
			}
			pingPong(b, w.ListenAddr().String(), msg)
			stop()
			<-done
		})
	}
}

func BenchmarkEchoStdNet(b *testing.B) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				buf := make([]byte, 64<<10)
				for {
					n, err := c.Read(buf)
					if err != nil {
						c.Close()
						return
					}
					c.Write(buf[:n])
				}
			}()
		}
	}()
	pingPong(b, ln.Addr().String(), make([]byte, 64))
}

// pingPong runs b.N round trips of msg over 50 connections.
func pingPong(b *testing.B, addr string, msg []byte) {
	const conns = 50
	cs := make([]net.Conn, conns)
	for i := range cs {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		cs[i] = c
	}
	b.ReportAllocs()
	b.SetBytes(int64(len(msg)))
	b.ResetTimer()
	var wg sync.WaitGroup
	for i, c := range cs {
		n := b.N / conns
		if i < b.N%conns {
			n++
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, len(msg))
			for j := 0; j < n; j++ {
				if _, err := c.Write(msg); err != nil {
					b.Error(err)
					return
				}
				if _, err := io.ReadFull(c, buf); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	b.StopTimer()
}
