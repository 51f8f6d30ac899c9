//go:build linux

package main

import (
	"context"
	"io"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
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

// TestConfigFile: the file's keys are the flags' names, and each one
// reaches its setting; a flag given on the command line overrides the
// file.
func TestConfigFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "balancer.json")
	os.WriteFile(path, []byte(`{"listen": "127.0.0.1:7000", "algorithm": "leastconn", "count": 3,
		"backends": [{"addr": "127.0.0.1:9001", "weight": 2}, {"addr": "127.0.0.1:9002"}],
		"connect-timeout": "3s", "idle-timeout": "4s", "retries": 5, "check-interval": "2s", "check-http": "/health",
		"rise": 6, "fall": 7, "slow-start": "8s", "proxy-protocol": 2, "splice": true, "resolve-later": true, "reuseport": false}`), 0o600)
	cfg, err := parse([]string{"-config", path, "-algorithm", "p2c"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	want := config{Listen: "127.0.0.1:7000", Count: 3, Algorithm: "p2c",
		Backends:       []balancer.Backend{{Addr: "127.0.0.1:9001", Weight: 2}, {Addr: "127.0.0.1:9002"}},
		ConnectTimeout: duration(3 * time.Second), IdleTimeout: duration(4 * time.Second), Retries: 5,
		CheckInterval: duration(2 * time.Second), CheckHTTP: "/health", Rise: 6, Fall: 7,
		SlowStart: duration(8 * time.Second), ProxyProtocol: 2, Splice: true, ResolveLater: true}
	if !reflect.DeepEqual(cfg, want) {
		t.Fatalf("parsed\n%+v\nwant\n%+v", cfg, want)
	}
	if _, err := parse([]string{"-listen", ":0"}, io.Discard); err == nil || !strings.Contains(err.Error(), "no backends") {
		t.Fatalf("no backends: %v", err)
	}
	if _, err := parse([]string{"-backend", "a:1,weight=x"}, io.Discard); err == nil {
		t.Fatal("bad weight accepted")
	}
	os.WriteFile(path, []byte(`{"check-interval": 5}`), 0o600)
	if _, err := parse([]string{"-config", path}, io.Discard); err == nil || !strings.Contains(err.Error(), "duration") {
		t.Fatalf("bad duration: %v", err)
	}
}

// TestConfigFileUnknownKeys: a key that is not a setting's, a typo or
// another spelling (the underscores the file used to want), is refused,
// named, rather than dropped (2s of 100ms checks against a dead backend
// once ran none, and a PROXY header setting was lost, without a word).
func TestConfigFileUnknownKeys(t *testing.T) {
	path := filepath.Join(t.TempDir(), "balancer.json")
	for _, tc := range []struct{ json, key string }{
		{`{"backends": [{"addr": "127.0.0.1:9001"}], "check_interval": "100ms"}`, "check_interval"},
		{`{"backends": [{"addr": "127.0.0.1:9001"}], "proxy_protocol": 2}`, "proxy_protocol"},
		{`{"backends": [{"addr": "127.0.0.1:9001"}], "chek-interval": "100ms"}`, "chek-interval"},
		{`{"backends": [{"adress": "127.0.0.1:9001"}]}`, "adress"},
	} {
		os.WriteFile(path, []byte(tc.json), 0o600)
		_, err := parse([]string{"-config", path}, io.Discard)
		if err == nil || !strings.Contains(err.Error(), strconv.Quote(tc.key)) || !strings.HasPrefix(err.Error(), path+": ") {
			t.Errorf("%s: %v; want the key %q refused, named", tc.json, err, tc.key)
		}
	}
}

// TestConfigFileDefaults: what the file leaves out takes the flag's
// default (reuseport was false with -config, true without).
func TestConfigFileDefaults(t *testing.T) {
	path := filepath.Join(t.TempDir(), "balancer.json")
	os.WriteFile(path, []byte(`{"backends": [{"addr": "127.0.0.1:9001"}]}`), 0o600)
	fromFile, err := parse([]string{"-config", path}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	fromFlags, err := parse([]string{"-backend", "127.0.0.1:9001"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(fromFile, fromFlags) || !fromFile.ReusePort {
		t.Fatalf("with -config: %+v\nwith flags: %+v", fromFile, fromFlags)
	}
}

// TestBadBackendRefusedAtStart: the command refuses each backend address
// that could never be connected to, naming it, before it listens (they
// used to start "up" and close every client with 0 bytes), as it refuses
// a bad -listen.
func TestBadBackendRefusedAtStart(t *testing.T) {
	for _, addr := range []string{"127.0.0.1:99999", "127.0.0.1:abc", "127.0.0.1:-5", "nosuchhost.invalid:31001"} {
		var out herdtest.Output
		err := run(context.Background(), []string{"-listen", "127.0.0.1:0", "-backend", addr}, &out, io.Discard)
		if err == nil || !strings.Contains(err.Error(), strconv.Quote(addr)) {
			t.Errorf("-backend %s: run said %v; want it refused, named", addr, err)
		}
		if strings.Contains(out.String(), "listening") {
			t.Errorf("-backend %s: it listened:\n%s", addr, out.String())
		}
	}
}
