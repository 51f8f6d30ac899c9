//go:build linux

package main

import (
	"context"
	"io"
	"net"
	"testing"
	"time"

	"github.com/seed358e4494/herd/internal/herdtest"
)

func TestEcho(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	var out herdtest.Output
	done := make(chan error, 1)
	go func() { done <- run(ctx, []string{"-addr", "udp://127.0.0.1:0", "-count", "2"}, &out, io.Discard) }()
	addr := out.ListenAddr(t)
	c, err := net.Dial("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("hello"))
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 64)
	n, err := c.Read(buf)
	if err != nil || string(buf[:n]) != "hello" {
		t.Fatalf("echo %q, %v", buf[:n], err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
