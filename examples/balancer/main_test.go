//go:build linux

package main

import (
	"context"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/seed358e4494/herd/internal/herdtest"

	"github.com/seed358e4494/herd/balancer"
)

// echoBackend is a goroutine echo server.
func echoBackend(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); io.Copy(c, c) }()
		}
	}()
	return ln.Addr().String()
}

func TestProxies(t *testing.T) {
	b1, b2 := echoBackend(t), echoBackend(t)
	ctx, cancel := context.WithCancel(context.Background())
	var out herdtest.Output
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"-listen", "127.0.0.1:0", "-count", "2", "-backend", b1, "-backend", b2 + ",weight=3",
			"-algorithm", "weighted", "-check-interval", "50ms", "-splice"}, &out, io.Discard)
	}()
	addr := out.ListenAddr(t)
	for i := 0; i < 8; i++ {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		c.Write([]byte("ping"))
		buf := make([]byte, 4)
		if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping" {
			t.Fatalf("echo %q, %v", buf, err)
		}
		c.Close()
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("run: %v", err)
	}
	// The table printed at the end: 2 and 6 connections by the weights.
	table := out.String()
	for _, want := range []string{b1 + "  up  1/1  0  2", b2 + "  up  3/3  0  6"} {
		if !strings.Contains(strings.Join(strings.Fields(table), "  "), want) {
			t.Errorf("table lacks %q:\n%s", want, table)
		}
	}
}

func TestConfigFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "balancer.json")
	os.WriteFile(path, []byte(`{"listen": "127.0.0.1:7000", "algorithm": "leastconn", "count": 3,
		"backends": [{"Addr": "127.0.0.1:9001", "Weight": 2}, {"Addr": "127.0.0.1:9002"}],
		"check_interval": "2s", "check_http": "/health", "proxy_protocol": 2}`), 0o600)
	cfg, err := parse([]string{"-config", path, "-algorithm", "p2c"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Listen != "127.0.0.1:7000" || cfg.Algorithm != "p2c" || cfg.Count != 3 || time.Duration(cfg.CheckInterval) != 2*time.Second ||
		cfg.CheckHTTP != "/health" || cfg.ProxyProtocol != 2 || len(cfg.Backends) != 2 || cfg.Backends[0] != (balancer.Backend{Addr: "127.0.0.1:9001", Weight: 2}) {
		t.Fatalf("parsed %+v", cfg)
	}
	if _, err := parse([]string{"-listen", ":0"}, io.Discard); err == nil || !strings.Contains(err.Error(), "no backends") {
		t.Fatalf("no backends: %v", err)
	}
	if _, err := parse([]string{"-backend", "a:1,weight=x"}, io.Discard); err == nil {
		t.Fatal("bad weight accepted")
	}
	os.WriteFile(path, []byte(`{"check_interval": 5}`), 0o600)
	if _, err := parse([]string{"-config", path}, io.Discard); err == nil || !strings.Contains(err.Error(), "duration") {
		t.Fatalf("bad duration: %v", err)
	}
}
