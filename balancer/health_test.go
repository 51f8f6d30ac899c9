package balancer

import (
	"bytes"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/seed358e4494/herd"
)

func TestCheckStatus(t *testing.T) {
	for _, tc := range []struct {
		resp       string
		done, pass bool
	}{
		{"HTTP/1.1 200 OK\r\n", true, true},
		{"HTTP/1.0 204\r\n", true, true},
		{"HTTP/1.1 302 Found\r\nLocation: /\r\n", true, true},
		{"HTTP/1.1 503 Service Unavailable\r\n", true, false},
		{"HTTP/1.1 404 Not Found\r\n", true, false},
		{"HTTP/1.1 2xx OK\r\n", true, false},
		{"HTTP/1.1 2000 OK\r\n", true, false},
		{"SSH-2.0-OpenSSH\r\n", true, false},
		{"HTTP/1.1 200 OK", false, false},
		{"", false, false},
	} {
		done, err := checkStatus([]byte(tc.resp))
		if done != tc.done || (done && (err == nil) != tc.pass) {
			t.Errorf("checkStatus(%q) = %v, %v; want done %v, pass %v", tc.resp, done, err, tc.done, tc.pass)
		}
	}
	if done, err := checkStatus(bytes.Repeat([]byte("x"), maxStatusLine+1)); !done || err == nil {
		t.Errorf("an answer with no line end: %v, %v", done, err)
	}
}

// FuzzCheckStatus: any answer is either waited on (and then short) or
// judged; only a well-formed 2xx or 3xx status line passes.
func FuzzCheckStatus(f *testing.F) {
	f.Add([]byte("HTTP/1.1 200 OK\r\n"))
	f.Add([]byte("HTTP/1.0 503\r\n"))
	f.Add([]byte("HTTP/1.1 2"))
	f.Fuzz(func(t *testing.T, resp []byte) {
		done, err := checkStatus(resp)
		if !done && len(resp) > maxStatusLine {
			t.Fatalf("waits for more after %d bytes", len(resp))
		}
		if done && err == nil {
			line, _, _ := bytes.Cut(resp, []byte("\r\n"))
			if !bytes.HasPrefix(line, []byte("HTTP/1.")) || (line[9] != '2' && line[9] != '3') {
				t.Fatalf("passed %q", line)
			}
		}
	})
}

func TestLocalShortage(t *testing.T) {
	local := &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("socket", syscall.EMFILE)}
	remote := &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}
	if !localShortage(local) || localShortage(remote) || localShortage(errCheckTimeout) {
		t.Fatalf("localShortage: EMFILE %v, ECONNREFUSED %v, a check timeout %v", localShortage(local), localShortage(remote), localShortage(errCheckTimeout))
	}
}

// TestAttachChecksAddresses: Attach refuses every backend address that
// could never be connected to, naming it, instead of starting "up" and
// closing every client (a bad port used to be found at the first connect,
// a name that does not resolve at each); ResolveLater lets a name that
// does not resolve through, and refuses the rest all the same.
func TestAttachChecksAddresses(t *testing.T) {
	for _, addr := range []string{"127.0.0.1", "udp://127.0.0.1:9", "tcp://:80", "unix://",
		"127.0.0.1:99999", "127.0.0.1:abc", "127.0.0.1:-5", "127.0.0.1:0", "nosuchhost.invalid:31001",
		"tcp4://[::1]:31001", "tcp6://127.0.0.1:31001"} {
		b := &Balancer{Backends: []Backend{{Addr: "127.0.0.1:31000"}, {Addr: addr}}, ConnectTimeout: 2 * time.Second}
		err := b.Attach(&herd.Worker{Addr: "tcp://127.0.0.1:0"})
		if err == nil || !strings.HasPrefix(err.Error(), "balancer: backend: herd: dial "+strconv.Quote(addr)+": ") {
			t.Errorf("backend %q: Attach said %v; want the address refused, named", addr, err)
		}
	}
	for _, addr := range []string{"127.0.0.1:31001", "localhost:31001", "tcp4://localhost:http", "unix:///nowhere.sock"} {
		b := &Balancer{Backends: []Backend{{Addr: addr}}}
		if err := b.Attach(&herd.Worker{Addr: "tcp://127.0.0.1:0"}); err != nil {
			t.Errorf("backend %q: Attach said %v", addr, err)
		}
	}
	// One backend, spelled two ways.
	for _, other := range []string{"tcp://127.0.0.1:80", "127.0.0.1:http", "tcp4://127.0.0.1:80", "127.0.0.1:080",
		"[::ffff:127.0.0.1]:80"} {
		twice := &Balancer{Backends: []Backend{{Addr: "127.0.0.1:80"}, {Addr: other}}}
		if err := twice.Attach(&herd.Worker{Addr: "tcp://127.0.0.1:0"}); err == nil || !strings.Contains(err.Error(), "listed twice") {
			t.Errorf("127.0.0.1:80 and %s: Attach said %v; want it refused as listed twice", other, err)
		}
	}
	for _, other := range []string{"LOCALHOST:80", "tcp://localhost:http"} {
		twice := &Balancer{Backends: []Backend{{Addr: "localhost:80"}, {Addr: other}}}
		if err := twice.Attach(&herd.Worker{Addr: "tcp://127.0.0.1:0"}); err == nil || !strings.Contains(err.Error(), "listed twice") {
			t.Errorf("localhost:80 and %s: Attach said %v; want it refused as listed twice", other, err)
		}
	}
	// Two endpoints: a name and an address it resolves to may well be two
	// (a host with several addresses), and the families differ.
	for _, pair := range [][2]string{{"localhost:80", "127.0.0.1:80"}, {"tcp4://localhost:80", "tcp6://localhost:80"}, {"127.0.0.1:80", "127.0.0.1:81"}} {
		b := &Balancer{Backends: []Backend{{Addr: pair[0]}, {Addr: pair[1]}}, ResolveLater: true}
		if err := b.Attach(&herd.Worker{Addr: "tcp://127.0.0.1:0"}); err != nil {
			t.Errorf("%s and %s: Attach said %v", pair[0], pair[1], err)
		}
	}
	// Negative settings and a health path that is not one, each named.
	for _, c := range []struct {
		b    *Balancer
		want string
	}{
		{&Balancer{Health: HealthCheck{Rise: -1}}, "Health.Rise is -1"},
		{&Balancer{Health: HealthCheck{Fall: -2}}, "Health.Fall is -2"},
		{&Balancer{Health: HealthCheck{Interval: -time.Second}}, "Health.Interval is -1s"},
		{&Balancer{ConnectTimeout: -time.Second}, "ConnectTimeout is -1s"},
		{&Balancer{Health: HealthCheck{HTTPPath: "nopath"}}, `Health.HTTPPath "nopath"`},
		{&Balancer{Health: HealthCheck{HTTPPath: "/a b"}}, `Health.HTTPPath "/a b"`},
		{&Balancer{Health: HealthCheck{HTTPPath: "/\r\nX-Injected: 1"}}, `Health.HTTPPath "/\r\nX-Injected: 1"`},
	} {
		c.b.Backends = []Backend{{Addr: "127.0.0.1:80"}}
		if err := c.b.Attach(&herd.Worker{Addr: "tcp://127.0.0.1:0"}); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Attach said %v; want an error with %q", err, c.want)
		}
	}
	late := &Balancer{Backends: []Backend{{Addr: "nosuchhost.invalid:31001"}}, ResolveLater: true}
	if err := late.Attach(&herd.Worker{Addr: "tcp://127.0.0.1:0"}); err != nil {
		t.Errorf("ResolveLater: Attach said %v", err)
	}
	late = &Balancer{Backends: []Backend{{Addr: "127.0.0.1:99999"}}, ResolveLater: true}
	if err := late.Attach(&herd.Worker{Addr: "tcp://127.0.0.1:0"}); err == nil {
		t.Errorf("ResolveLater: Attach took port 99999")
	}
}
