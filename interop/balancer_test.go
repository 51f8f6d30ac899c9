package interop

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	proxyproto "github.com/pires/go-proxyproto"
)

// startBalancer runs examples/balancer with args on a free loopback port
// and returns the address it printed.
func startBalancer(t *testing.T, bin string, args ...string) string {
	t.Helper()
	return startListening(t, bin, append([]string{"-listen", "127.0.0.1:0", "-count", "2"}, args...)...)
}

// getFrom makes one HTTP request through addr from the loopback address
// local, and returns the body and the client's own address.
func getFrom(t *testing.T, addr, local string) (string, string) {
	t.Helper()
	var client string
	tr := &http.Transport{DialContext: func(ctx context.Context, network, a string) (net.Conn, error) {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}}
		c, err := d.DialContext(ctx, network, a)
		if err == nil {
			client = c.LocalAddr().String()
		}
		return c, err
	}, DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Get("http://" + addr + "/")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return string(body), client
}

// TestBalancerProxyProtocolHAProxy: HAProxy, as the backend side with
// accept-proxy, reads the PROXY header examples/balancer sends (v1 and v2,
// copying and splicing) and sees the client's own address and port.
func TestBalancerProxyProtocolHAProxy(t *testing.T) {
	haproxy := tool(t, "haproxy", "/usr/sbin/haproxy")
	backend := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, r.Header.Get("X-Client"))
	})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go backend.Serve(ln)
	defer backend.Close()
	front := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	cfg := fmt.Sprintf(`global
	maxconn 200
defaults
	mode http
	timeout connect 5s
	timeout client 30s
	timeout server 30s
frontend fe
	bind %s accept-proxy
	http-request set-header X-Client %%[src]:%%[src_port]
	default_backend be
backend be
	server s1 %s
`, front, ln.Addr())
	cfgPath := filepath.Join(t.TempDir(), "haproxy.cfg")
	os.WriteFile(cfgPath, []byte(cfg), 0o600)
	if out, err := exec.Command(haproxy, "-c", "-f", cfgPath).CombinedOutput(); err != nil {
		t.Fatalf("haproxy -c: %v\n%s", err, out)
	}
	startProcess(t, haproxy, "-db", "-f", cfgPath)
	waitListening(t, front)
	bin := buildExample(t, "balancer")
	for _, v := range []string{"1", "2"} {
		for _, splice := range []bool{false, true} {
			t.Run(fmt.Sprintf("v%s/splice=%v", v, splice), func(t *testing.T) {
				args := []string{"-backend", front, "-proxy-protocol", v}
				if splice {
					args = append(args, "-splice")
				}
				addr := startBalancer(t, bin, args...)
				got, client := getFrom(t, addr, "127.0.0.7")
				if got != client {
					t.Fatalf("HAProxy saw the client as %q; it is %s", got, client)
				}
			})
		}
	}
}

// TestBalancerProxyProtocolGoParser: go-proxyproto, a common Go
// implementation of the receiving side, reads the same headers.
func TestBalancerProxyProtocolGoParser(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	pl := &proxyproto.Listener{Listener: ln, ReadHeaderTimeout: 5 * time.Second}
	defer pl.Close()
	go func() {
		for {
			c, err := pl.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				// RemoteAddr reads the header: the client, not the balancer.
				remote := c.RemoteAddr().String()
				fmt.Fprintf(c, "HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(remote), remote)
			}()
		}
	}()
	bin := buildExample(t, "balancer")
	for _, v := range []string{"1", "2"} {
		t.Run("v"+v, func(t *testing.T) {
			addr := startBalancer(t, bin, "-backend", ln.Addr().String(), "-proxy-protocol", v)
			got, client := getFrom(t, addr, "127.0.0.9")
			if got != client {
				t.Fatalf("go-proxyproto read the client as %q; it is %s", got, client)
			}
		})
	}
}

// waitListening waits until addr accepts connections.
func waitListening(t *testing.T, addr string) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("nothing listens on %s", addr)
		}
	}
}
