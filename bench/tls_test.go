//go:build linux

package bench

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	nethttp "net/http"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/seed358e4494/herd"
	"github.com/seed358e4494/herd/internal/selfsigned"
	herdhttp "github.com/seed358e4494/herd/protocol/http"
)

// The TLS benchmarks: herd's HTTP server with Worker.TLS against net/http
// with crypto/tls, each in a child process (this test binary, re-executed)
// so that its CPU and memory are its own. Both serve "Hello, World!" over
// TLS 1.3 with an ECDSA P-256 certificate, on 2 loops (herd) and
// GOMAXPROCS=2 (both). Reported: requests (or handshakes) per second, and
// the server's CPU per request from /proc; BenchmarkTLSIdle, the server's
// memory per idle TLS connection at 5,000 connections.
//
//	go test -run '^$' -bench 'TLS' -benchtime 3s -count 3
const envTLSServer = "HERD_BENCH_TLS_SERVER"

// tlsServerMain is the child: it serves until stdin closes.
func tlsServerMain(kind string) int {
	cert, _, err := selfsigned.Certificate()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"http/1.1"}}
	hello := []byte("Hello, World!")
	bulk := bytes.Repeat([]byte("x"), 64<<10) // GET /64k: a 64 KiB body, many records
	gc := func() { runtime.GC(); debug.FreeOSMemory() }
	var addr string
	switch kind {
	case "herd", "herd-plain":
		w := &herd.Worker{Addr: "tcp://127.0.0.1:0", Count: 2, TLS: cfg, MaxConns: 20000, Logger: slog.New(slog.DiscardHandler)}
		if kind == "herd-plain" {
			w.TLS = nil // the same server over plain TCP: what TLS costs
		}
		srv := &herdhttp.Server{Handler: func(rw *herdhttp.ResponseWriter, r *herdhttp.Request) {
			switch string(r.Path()) {
			case "/gc":
				gc()
			case "/64k":
				rw.Write(bulk)
				return
			}
			rw.Write(hello)
		}}
		if err := srv.Attach(w); err != nil || w.Listen() != nil {
			return 1
		}
		go w.Run(context.Background())
		addr = w.ListenAddr().String()
	default:
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 1
		}
		addr = l.Addr().String()
		srv := &nethttp.Server{Handler: nethttp.HandlerFunc(func(rw nethttp.ResponseWriter, r *nethttp.Request) {
			switch r.URL.Path {
			case "/gc":
				gc()
			case "/64k":
				rw.Write(bulk)
				return
			}
			rw.Write(hello)
		}), ErrorLog: log.New(io.Discard, "", 0)} // handshake errors by the thousand under BenchmarkTLSUnderAttack
		go srv.Serve(tls.NewListener(l, cfg))
	}
	fmt.Printf("%s %d\n", addr, os.Getpid())
	io.Copy(io.Discard, os.Stdin)
	return 0
}

// tlsChild is a running server child.
type tlsChild struct {
	addr  string
	pid   int
	cmd   *exec.Cmd
	stdin io.WriteCloser
}

func startTLSChild(b *testing.B, kind string) *tlsChild {
	cmd := exec.Command(os.Args[0], "-test.run=^$", "-test.bench=^$")
	cmd.Env = append(os.Environ(), envTLSServer+"="+kind, "GOMAXPROCS=2")
	cmd.Stderr = os.Stderr
	stdin, _ := cmd.StdinPipe()
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		b.Fatalf("the %s server did not start: %v", kind, err)
	}
	f := strings.Fields(line)
	pid, _ := strconv.Atoi(f[1])
	c := &tlsChild{addr: f[0], pid: pid, cmd: cmd, stdin: stdin}
	b.Cleanup(func() { stdin.Close(); cmd.Wait() })
	return c
}

func (c *tlsChild) rss() int64 {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", c.pid))
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	return 0
}

func tlsClientConfig() *tls.Config {
	return &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13, NextProtos: []string{"http/1.1"}, ClientSessionCache: nil}
}

// get sends one request on a connection and reads the response.
func get(c net.Conn, br *bufio.Reader, path string) error {
	if _, err := io.WriteString(c, "GET "+path+" HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		return err
	}
	resp, err := nethttp.ReadResponse(br, nil)
	if err != nil {
		return err
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return err
}

func BenchmarkTLS(b *testing.B) {
	parent := b // the servers live as long as it: b.Run calls a sub-benchmark several times
	for _, kind := range []string{"herd", "net-http", "herd-plain"} {
		var child *tlsChild
		modes := []string{"keepalive", "handshake", "bulk"}
		if kind == "herd-plain" {
			modes = []string{"keepalive", "bulk"} // the rows TLS's cost per request is read against
		}
		for _, mode := range modes {
			b.Run(kind+"/"+mode, func(b *testing.B) {
				if child == nil {
					child = startTLSChild(parent, kind)
				}
				conns := 50
				if mode == "handshake" {
					conns = 8
				}
				var next atomic.Int64
				var failed atomic.Int64
				cpu0 := procCPU(child.pid)
				b.ResetTimer()
				start := time.Now()
				var wg sync.WaitGroup
				for range conns {
					wg.Add(1)
					go func() {
						defer wg.Done()
						var c net.Conn
						var br *bufio.Reader
						for next.Add(1) <= int64(b.N) {
							if c == nil || mode == "handshake" {
								if c != nil {
									c.Close()
								}
								var err error
								if kind == "herd-plain" {
									c, err = net.Dial("tcp", child.addr)
								} else {
									c, err = tls.Dial("tcp", child.addr, tlsClientConfig())
								}
								if err != nil {
									failed.Add(1)
									c = nil
									continue
								}
								br = bufio.NewReader(c)
							}
							path := "/"
							if mode == "bulk" {
								path = "/64k" // keep-alive, a 64 KiB response
							}
							if get(c, br, path) != nil {
								failed.Add(1)
								c.Close()
								c = nil
							}
						}
						if c != nil {
							c.Close()
						}
					}()
				}
				wg.Wait()
				elapsed := time.Since(start)
				b.StopTimer()
				cpu := procCPU(child.pid) - cpu0
				if f := failed.Load(); f > 0 {
					b.Fatalf("%d requests failed", f)
				}
				b.ReportMetric(float64(b.N)/elapsed.Seconds(), "req/s")
				b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "server-cpu-µs/req")
			})
		}
	}
}

// BenchmarkTLSIdle: 5,000 TLS connections, each after one request, idle;
// the server's resident memory per connection (after a GC), once per run.
// The -x25519 rows' client offers only an X25519 key share: Go's default
// ClientHello also carries an X25519MLKEM768 one (about 1.2 KB more),
// which crypto/tls's buffers grow to hold for the connection's life.
func BenchmarkTLSIdle(b *testing.B) {
	const n = 5000
	for _, row := range []string{"herd", "net-http", "herd-x25519", "net-http-x25519"} {
		kind, classic := strings.CutSuffix(row, "-x25519")
		clientConfig := func() *tls.Config {
			cfg := tlsClientConfig()
			if classic {
				cfg.CurvePreferences = []tls.CurveID{tls.X25519}
			}
			return cfg
		}
		b.Run(row, func(b *testing.B) {
			child := startTLSChild(b, kind)
			gcGet := func() {
				c, err := tls.Dial("tcp", child.addr, clientConfig())
				if err != nil {
					b.Fatal(err)
				}
				defer c.Close()
				get(c, bufio.NewReader(c), "/gc")
			}
			gcGet()
			time.Sleep(200 * time.Millisecond)
			gcGet()
			before := child.rss()
			conns, failed, firstErr := openMany(n, func() (net.Conn, error) {
				c, err := tls.Dial("tcp", child.addr, clientConfig())
				if err != nil {
					return nil, err
				}
				if err := get(c, bufio.NewReader(c), "/"); err != nil {
					c.Close()
					return nil, err
				}
				return c, nil
			})
			defer func() {
				for _, c := range conns {
					c.Close()
				}
			}()
			if failed > 0 {
				b.Fatalf("%d of %d connections failed; the first: %v", failed, n, firstErr)
			}
			gcGet()
			time.Sleep(200 * time.Millisecond)
			after := child.rss()
			b.ReportMetric(float64(after-before)/n, "B/conn")
			for range b.N {
			}
		})
	}
}
