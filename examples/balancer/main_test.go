//go:build linux

package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/seed358e4494/herd/internal/herdtest"

	"github.com/seed358e4494/herd/balancer"
)

// echoBackend is a goroutine echo server.
func echoBackend(t *testing.T) string {
	return serveEach(t, func(c net.Conn) { io.Copy(c, c) })
}

// serveEach is a goroutine-per-connection server on a free loopback port:
// f serves each connection, which is closed when f returns.
func serveEach(t *testing.T, f func(c net.Conn)) string {
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
			go func() { defer c.Close(); f(c) }()
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
		"rise": 6, "fall": 7, "slow-start": "8s", "proxy-protocol": 2, "splice": true, "resolve-later": true, "reuseport": false,
		"stop-timeout": "9s", "upgrade-grace": "10s"}`), 0o600)
	cfg, err := parse([]string{"-config", path, "-algorithm", "p2c"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	want := config{Listen: "127.0.0.1:7000", Count: 3, Algorithm: "p2c",
		Backends:       []balancer.Backend{{Addr: "127.0.0.1:9001", Weight: 2}, {Addr: "127.0.0.1:9002"}},
		ConnectTimeout: duration(3 * time.Second), IdleTimeout: duration(4 * time.Second), Retries: 5,
		CheckInterval: duration(2 * time.Second), CheckHTTP: "/health", Rise: 6, Fall: 7,
		SlowStart: duration(8 * time.Second), ProxyProtocol: 2, Splice: true, ResolveLater: true,
		StopTimeout: duration(9 * time.Second), UpgradeGrace: duration(10 * time.Second)}
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
		// encoding/json alone took these: keys in another case, and a key
		// given twice (the last won).
		{`{"backends": [{"addr": "127.0.0.1:9001"}], "LISTEN": "127.0.0.1:0"}`, "LISTEN"},
		{`{"backends": [{"Addr": "127.0.0.1:9001"}]}`, "Addr"},
		{`{"backends": [{"addr": "127.0.0.1:9001"}], "listen": "127.0.0.1:0", "listen": "127.0.0.1:1"}`, "listen"},
	} {
		os.WriteFile(path, []byte(tc.json), 0o600)
		_, err := parse([]string{"-config", path}, io.Discard)
		if err == nil || !strings.Contains(err.Error(), strconv.Quote(tc.key)) || !strings.HasPrefix(err.Error(), path+": ") {
			t.Errorf("%s: %v; want the key %q refused, named", tc.json, err, tc.key)
		}
	}
}

// TestNegativeDurationsRefused: a negative duration or count, in the file
// or as a flag, and a value of the wrong form in the file, are refused,
// named.
func TestNegativeDurationsRefused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "balancer.json")
	os.WriteFile(path, []byte(`{"backends": [{"addr": "127.0.0.1:9001"}], "upgrade-grace": "-5s"}`), 0o600)
	if _, err := parse([]string{"-config", path}, io.Discard); err == nil || !strings.Contains(err.Error(), "upgrade-grace") {
		t.Errorf("upgrade-grace -5s in the file: %v; want it refused, named", err)
	}
	if _, err := parse([]string{"-backend", "127.0.0.1:9001", "-idle-timeout", "-1s"}, io.Discard); err == nil || !strings.Contains(err.Error(), "idle-timeout") {
		t.Errorf("-idle-timeout -1s: %v; want it refused, named", err)
	}
	for _, name := range []string{"count", "retries", "rise", "fall"} {
		if _, err := parse([]string{"-backend", "127.0.0.1:9001", "-" + name, "-1"}, io.Discard); err == nil || !strings.HasPrefix(err.Error(), name+" -1") {
			t.Errorf("-%s -1: %v; want it refused, named", name, err)
		}
	}
	// A value the file gets wrong is named by its key too.
	os.WriteFile(path, []byte(`{"backends": [{"addr": "127.0.0.1:9001"}], "stop-timeout": "5 sec"}`), 0o600)
	if _, err := parse([]string{"-config", path}, io.Discard); err == nil || !strings.Contains(err.Error(), "stop-timeout") {
		t.Errorf("stop-timeout \"5 sec\" in the file: %v; want it refused, named", err)
	}
	os.WriteFile(path, []byte(`{"backends": [{"addr": "127.0.0.1:9001", "weight": "3"}]}`), 0o600)
	if _, err := parse([]string{"-config", path}, io.Discard); err == nil || !strings.Contains(err.Error(), "weight") {
		t.Errorf("weight \"3\" in the file: %v; want it refused, named", err)
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

// envChild makes the test binary run the command itself (TestMain), so
// that the tests can signal it, and it can upgrade by starting its own
// executable again.
const envChild = "HERD_BALANCER_EXAMPLE_CHILD"

func TestMain(m *testing.M) {
	if os.Getenv(envChild) != "" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// child is the command running in a process of its own.
type child struct {
	cmd   *exec.Cmd
	lines chan string // its output, line by line
	addr  string
	exit  chan error
}

func startChild(t *testing.T, args ...string) *child {
	t.Helper()
	cmd := exec.Command(os.Args[0], append([]string{"-listen", "127.0.0.1:0", "-count", "1"}, args...)...)
	cmd.Env = append(os.Environ(), envChild+"=1")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &child{cmd: cmd, lines: make(chan string, 64), exit: make(chan error, 1)}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			c.lines <- sc.Text()
		}
		close(c.lines)
	}()
	t.Cleanup(func() { cmd.Process.Kill() })
	c.addr, _ = c.listening(t)
	go func() { c.exit <- cmd.Wait() }()
	return c
}

// listening waits for a process's "listening on ADDR pid N" line.
func (c *child) listening(t *testing.T) (addr string, pid int) {
	t.Helper()
	timeout := time.After(20 * time.Second)
	for {
		select {
		case line, ok := <-c.lines:
			if !ok {
				t.Fatal("the balancer's output ended before it listened")
			}
			if _, err := fmt.Sscanf(line, "balancer: listening on %s pid %d", &addr, &pid); err == nil {
				return addr, pid
			}
		case <-timeout:
			t.Fatal("the balancer did not listen within 20s")
		}
	}
}

func (c *child) wait(t *testing.T) error {
	t.Helper()
	select {
	case err := <-c.exit:
		return err
	case <-time.After(20 * time.Second):
		t.Fatal("the balancer did not exit within 20s")
		return nil
	}
}

// slowBackend answers each connection with 6 chunks of 1,000 bytes over
// 3 seconds, then ends its stream.
func slowBackend(t *testing.T) string {
	return serveEach(t, func(c net.Conn) {
		for i := 0; i < 6; i++ {
			if i > 0 {
				time.Sleep(600 * time.Millisecond)
			}
			if _, err := c.Write(make([]byte, 1000)); err != nil {
				return
			}
		}
	})
}

// streamAcross reads the slow backend's answer through the balancer at
// addr, calling during once the first chunk is in; it returns the bytes
// read and how the stream ended.
func streamAcross(t *testing.T, addr string, during func()) (int64, error) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := io.ReadFull(c, make([]byte, 1000)); err != nil {
		t.Fatalf("first chunk: %v", err)
	}
	during()
	n, err := io.Copy(io.Discard, c)
	return n + 1000, err
}

// TestSoftStop: SIGTERM during a 3-second answer lets it arrive whole, and
// the process exits once it has (HAProxy's soft stop, SIGUSR1, does the
// same); with -stop-timeout 1s the client sees a reset instead, and a
// second SIGTERM resets it at once. (The stop used to end the client's
// stream at once, cleanly, after 1 or 2 of the 6 chunks.)
func TestSoftStop(t *testing.T) {
	t.Parallel() // a child process of its own, and waits
	backend := slowBackend(t)
	t.Run("whole", func(t *testing.T) {
		c := startChild(t, "-backend", backend, "-stop-timeout", "10s")
		start := time.Now()
		n, err := streamAcross(t, c.addr, func() { c.cmd.Process.Signal(syscall.SIGTERM) })
		if n != 6000 || err != nil {
			t.Fatalf("read %d bytes, then %v; want 6000 and the end of stream", n, err)
		}
		if err := c.wait(t); err != nil {
			t.Fatalf("exit: %v", err)
		}
		t.Logf("6 chunks over %v, SIGTERM after the first", time.Since(start).Round(time.Millisecond))
	})
	t.Run("stop timeout", func(t *testing.T) {
		c := startChild(t, "-backend", backend, "-stop-timeout", "1s")
		n, err := streamAcross(t, c.addr, func() { c.cmd.Process.Signal(syscall.SIGTERM) })
		if n >= 6000 || !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("read %d bytes, then %v; want fewer than 6000, then a reset", n, err)
		}
		c.wait(t)
	})
	t.Run("second signal", func(t *testing.T) {
		c := startChild(t, "-backend", backend, "-stop-timeout", "10s")
		var second time.Time
		n, err := streamAcross(t, c.addr, func() {
			c.cmd.Process.Signal(syscall.SIGTERM)
			time.Sleep(200 * time.Millisecond)
			second = time.Now()
			c.cmd.Process.Signal(syscall.SIGTERM)
		})
		if n >= 6000 || !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("read %d bytes, then %v; want fewer than 6000, then a reset", n, err)
		}
		if took := time.Since(second); took > 2*time.Second {
			t.Fatalf("reset %v after the second signal", took)
		}
		c.wait(t)
	})
}

// TestUpgradeKeepsStreams: SIGHUP during a 3-second answer starts the
// new process, which takes the listening socket and serves the next
// client, while the old one serves the answer to its end and then exits:
// with -upgrade-grace longer than the stream, and with a shorter one, when
// the soft stop that follows the grace carries it (the stop after the
// grace used to cut it, with a clean end).
func TestUpgradeKeepsStreams(t *testing.T) {
	t.Parallel() // child processes of its own, and waits
	backend := slowBackend(t)
	for _, grace := range []string{"5s", "500ms"} {
		t.Run("grace "+grace, func(t *testing.T) {
			t.Parallel()
			c := startChild(t, "-backend", backend, "-upgrade-grace", grace, "-stop-timeout", "10s")
			var newPID int
			n, err := streamAcross(t, c.addr, func() {
				c.cmd.Process.Signal(syscall.SIGHUP)
				_, newPID = c.listening(t)
				t.Cleanup(func() { syscall.Kill(newPID, syscall.SIGKILL) })
			})
			if n != 6000 || err != nil {
				t.Fatalf("read %d bytes, then %v across the upgrade; want 6000 and the end of stream", n, err)
			}
			if newPID == c.cmd.Process.Pid {
				t.Fatal("the upgrade printed the old process's pid")
			}
			if err := c.wait(t); err != nil {
				t.Fatalf("old process: %v", err)
			}
			// The old process is gone: the new one serves.
			n, err = streamAcross(t, c.addr, func() {})
			if n != 6000 || err != nil {
				t.Fatalf("after the upgrade: read %d bytes, then %v", n, err)
			}
			syscall.Kill(newPID, syscall.SIGTERM)
		})
	}
}
