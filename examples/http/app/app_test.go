//go:build linux

package app

import (
	"context"
	"io"
	"net"
	nethttp "net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/seed358e4494/herd/internal/herdtest"
)

// start runs the example with args until the test ends and returns its
// output.
func start(t *testing.T, args ...string) *herdtest.Output {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var out herdtest.Output
	done := make(chan error, 1)
	go func() { done <- Run(ctx, args, &out, io.Discard, nil) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("Run did not return within 10s of its context's end")
		}
	})
	return &out
}

func get(t *testing.T, c *nethttp.Client, url string) (int, string) {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return resp.StatusCode, string(b)
}

// TestAdminPages: the status page is not on the application's address
// (/status and /status?conns=N are 404 there, and tell nothing of the
// clients), but on the admin address the example prints, where ?conns
// lists a client of the application by its address; the application's
// routes are not on the admin address.
func TestAdminPages(t *testing.T) {
	out := start(t, "-addr", "tcp://127.0.0.1:0", "-admin", "127.0.0.1:0", "-count", "2")
	public := out.ListenAddr(t)
	admin := out.AddrAfter(t, "admin pages on ")
	if public == admin {
		t.Fatalf("the admin pages share the application's address %s", public)
	}
	if !strings.Contains(out.String(), "(/status)") {
		t.Errorf("the admin line does not list /status: %q", out.String())
	}

	// A client of the application, kept open so that ?conns lists it.
	c := &nethttp.Client{Timeout: 10 * time.Second, Transport: &nethttp.Transport{MaxIdleConnsPerHost: 1}}
	defer c.CloseIdleConnections()
	var dialed atomic.Value // the client's address
	c.Transport.(*nethttp.Transport).DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		conn, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		if err == nil && addr == public {
			dialed.Store(conn.LocalAddr().String())
		}
		return conn, err
	}
	if code, body := get(t, c, "http://"+public+"/"); code != 200 || body != "Hello, World!" {
		t.Fatalf("GET /: %d %q", code, body)
	}
	for _, path := range []string{"/status", "/status?conns=100", "/status?format=json&conns=100"} {
		code, body := get(t, c, "http://"+public+path)
		if code != 404 || strings.Contains(body, "127.0.0.1") || strings.Contains(body, "loops=") {
			t.Errorf("GET %s on the application's address: %d %q, want a bare 404", path, code, body)
		}
	}

	ac := &nethttp.Client{Timeout: 10 * time.Second}
	defer ac.CloseIdleConnections()
	code, body := get(t, ac, "http://"+admin+"/status?conns=100")
	if code != 200 || !strings.Contains(body, `worker "http"`) {
		t.Fatalf("GET /status on the admin address: %d %q", code, body)
	}
	if clientAddr, _ := dialed.Load().(string); clientAddr == "" || !strings.Contains(body, clientAddr) {
		t.Errorf("/status?conns=100 does not list the application's client %s:\n%s", clientAddr, body)
	}
	for _, path := range []string{"/", "/std/gopher"} {
		if code, _ := get(t, ac, "http://"+admin+path); code != 404 {
			t.Errorf("GET %s on the admin address: %d, want 404", path, code)
		}
	}
}

// TestNoAdmin: -admin "" serves no operator pages at all.
func TestNoAdmin(t *testing.T) {
	out := start(t, "-addr", "tcp://127.0.0.1:0", "-admin", "", "-count", "1")
	public := out.ListenAddr(t)
	c := &nethttp.Client{Timeout: 10 * time.Second}
	defer c.CloseIdleConnections()
	if code, _ := get(t, c, "http://"+public+"/status"); code != 404 {
		t.Errorf("GET /status: %d, want 404", code)
	}
	if strings.Contains(out.String(), "admin pages") {
		t.Errorf("an admin address was printed: %q", out.String())
	}
}

// TestPrivate: the addresses the example serves its admin pages on without
// a warning are loopback ones and unix sockets.
func TestPrivate(t *testing.T) {
	for _, tc := range []struct {
		a    net.Addr
		want bool
	}{
		{&net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 9091}, true},
		{&net.TCPAddr{IP: net.IPv6loopback, Port: 9091}, true},
		{&net.UnixAddr{Name: "/run/herd-admin.sock", Net: "unix"}, true},
		{&net.TCPAddr{IP: net.IPv4zero, Port: 9091}, false},
		{&net.TCPAddr{IP: net.IPv6zero, Port: 9091}, false},
		{&net.TCPAddr{IP: net.IPv4(10, 0, 0, 7), Port: 9091}, false},
	} {
		if got := private(tc.a); got != tc.want {
			t.Errorf("private(%v) = %v, want %v", tc.a, got, tc.want)
		}
	}
}

// TestPlainHTTPOnTLS: a plain http:// request to the example served with
// -tls gets net/http's answer, 400 "Client sent an HTTP request to an
// HTTPS server", and then the end of the connection; net/http's client
// reads it as such.
func TestPlainHTTPOnTLS(t *testing.T) {
	out := start(t, "-addr", "tcp://127.0.0.1:0", "-admin", "", "-tls")
	addr := out.ListenAddr(t)
	c := &nethttp.Client{Timeout: 10 * time.Second}
	code, body := get(t, c, "http://"+addr+"/")
	if code != nethttp.StatusBadRequest || body != "Client sent an HTTP request to an HTTPS server.\n" {
		t.Errorf("plain HTTP to the https port: %d %q, want 400 and net/http's text", code, body)
	}
	raw, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	raw.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(raw, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	got, err := io.ReadAll(raw)
	if err != nil || !strings.HasPrefix(string(got), "HTTP/1.0 400 Bad Request\r\n") {
		t.Errorf("got %q, %v; want the 400, then the end", got, err)
	}
}
