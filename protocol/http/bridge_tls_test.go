package herdhttp

import (
	"crypto/tls"
	"fmt"
	"io"
	"net"
	nethttp "net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/seed358e4494/herd"
	"github.com/seed358e4494/herd/internal/herdtest"
)

// tlsSummary is what a handler saw of a request's TLS state, one line.
func tlsSummary(st *tls.ConnectionState) string {
	if st == nil {
		return "no TLS"
	}
	peer := "-"
	if len(st.PeerCertificates) > 0 {
		peer = st.PeerCertificates[0].Subject.CommonName
	}
	chain := 0
	if len(st.VerifiedChains) > 0 {
		chain = len(st.VerifiedChains[0])
	}
	return fmt.Sprintf("version=%s cipher=%s sni=%q alpn=%q complete=%v peer=%s chains=%d chain0=%d",
		tls.VersionName(st.Version), tls.CipherSuiteName(st.CipherSuite), st.ServerName,
		st.NegotiatedProtocol, st.HandshakeComplete, peer, len(st.VerifiedChains), chain)
}

// tlsClient is an HTTP/1.1 client with cfg that follows no redirects.
func tlsClient(t *testing.T, cfg *tls.Config) *nethttp.Client {
	c := &nethttp.Client{
		Timeout:       10 * time.Second,
		Transport:     &nethttp.Transport{TLSClientConfig: cfg, ForceAttemptHTTP2: false},
		CheckRedirect: func(*nethttp.Request, []*nethttp.Request) error { return nethttp.ErrUseLastResponse },
	}
	t.Cleanup(c.CloseIdleConnections)
	return c
}

// getBody GETs url and returns the status and body.
func getBody(t *testing.T, c *nethttp.Client, url string) (*nethttp.Response, string) {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return resp, string(b)
}

// TestBridgeTLS: a net/http handler behind Bridge on a TLS worker sees
// r.TLS as net/http's server sets it (the version, cipher suite, SNI server
// name and ALPN protocol the client negotiated, the handshake complete),
// and the connection's local address in its context; a herd Handler sees
// the same through Request.TLS, one state per connection. Under TLS 1.3
// and under TLS 1.2 with a cipher suite the client chose.
func TestBridgeTLS(t *testing.T) {
	srvCfg, cliCfg := herdtest.TLSConfigs(t)
	srvCfg.NextProtos = []string{"http/1.1"}
	cliCfg.NextProtos = []string{"http/1.1"}
	cliCfg.ServerName = "localhost" // sent as SNI (an IP address is not)
	mux := nethttp.NewServeMux()
	mux.HandleFunc("/std", func(w nethttp.ResponseWriter, r *nethttp.Request) {
		local, _ := r.Context().Value(nethttp.LocalAddrContextKey).(net.Addr)
		fmt.Fprintf(w, "local=%v ", local)
		io.WriteString(w, tlsSummary(r.TLS))
	})
	std := Bridge(mux, 4)
	var first atomic.Pointer[tls.ConnectionState] // the connection's, as the herd handler saw it first
	s := &Server{Handler: func(w *ResponseWriter, r *Request) {
		if r.PathString() == "/std" {
			std(w, r)
			return
		}
		if !first.CompareAndSwap(nil, r.TLS()) && r.TLS() != first.Load() {
			w.WriteString("a new TLS state for a request of the same connection\n")
		}
		w.WriteString("local=" + r.Conn().LocalAddr().String() + " " + tlsSummary(r.TLS()))
	}}
	w := &herd.Worker{Addr: "tcp://127.0.0.1:0", Count: 1, TLS: srvCfg, Logger: quietLogger()}
	addr := serveOn(t, s, w)

	check := func(t *testing.T, cfg *tls.Config, wantVersion, wantCipher uint16) {
		first.Store(nil)
		c := tlsClient(t, cfg)
		for _, path := range []string{"/std", "/herd", "/std", "/herd"} { // one connection
			resp, body := getBody(t, c, "https://"+addr+path)
			if resp.TLS == nil || resp.TLS.Version != wantVersion || (wantCipher != 0 && resp.TLS.CipherSuite != wantCipher) {
				t.Fatalf("the client negotiated %s", tlsSummary(resp.TLS))
			}
			want := fmt.Sprintf(`local=%s version=%s cipher=%s sni="localhost" alpn="http/1.1" complete=true peer=- chains=0 chain0=0`,
				addr, tls.VersionName(resp.TLS.Version), tls.CipherSuiteName(resp.TLS.CipherSuite))
			if resp.StatusCode != 200 || body != want {
				t.Errorf("GET %s: %d\n%s\nwant\n%s", path, resp.StatusCode, body, want)
			}
		}
	}
	t.Run("TLS 1.3", func(t *testing.T) { check(t, cliCfg.Clone(), tls.VersionTLS13, 0) })
	t.Run("TLS 1.2", func(t *testing.T) {
		cfg := cliCfg.Clone()
		cfg.MaxVersion = tls.VersionTLS12
		cfg.CipherSuites = []uint16{tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256}
		check(t, cfg, tls.VersionTLS12, tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256)
	})
}

// TestBridgeMutualTLS: a worker whose tls.Config requires and verifies
// client certificates (RequireAndVerifyClientCert, ClientCAs) serves a
// client that presents one its CA signed, and the bridged handler reads it
// (r.TLS.PeerCertificates[0].Subject, the verified chain: the client's
// certificate and its CA); a client without a certificate, or with one
// another CA signed, fails the handshake and never reaches the handler.
func TestBridgeMutualTLS(t *testing.T) {
	srvCfg, cliCfg := herdtest.TLSConfigs(t)
	cas, cert := herdtest.ClientCert(t, "alice")
	_, stranger := herdtest.ClientCert(t, "mallory") // signed by another CA
	srvCfg.NextProtos = []string{"http/1.1"}
	srvCfg.ClientAuth = tls.RequireAndVerifyClientCert
	srvCfg.ClientCAs = cas
	var served atomic.Int32
	mux := nethttp.NewServeMux()
	mux.HandleFunc("/", func(w nethttp.ResponseWriter, r *nethttp.Request) {
		served.Add(1)
		if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 || len(r.TLS.VerifiedChains) == 0 {
			nethttp.Error(w, "no verified client certificate: "+tlsSummary(r.TLS), 403)
			return
		}
		fmt.Fprintf(w, "hello %s of %s, chain of %d", r.TLS.PeerCertificates[0].Subject.CommonName,
			strings.Join(r.TLS.PeerCertificates[0].Subject.Organization, ","), len(r.TLS.VerifiedChains[0]))
	})
	w := &herd.Worker{Addr: "tcp://127.0.0.1:0", Count: 1, TLS: srvCfg, Logger: quietLogger()}
	addr := serveOn(t, &Server{Handler: Bridge(mux, 4)}, w)

	for _, v := range []uint16{tls.VersionTLS13, tls.VersionTLS12} {
		cfg := cliCfg.Clone()
		cfg.MaxVersion = v
		cfg.Certificates = []tls.Certificate{cert}
		resp, body := getBody(t, tlsClient(t, cfg), "https://"+addr+"/")
		if resp.StatusCode != 200 || body != "hello alice of herd tests, chain of 2" {
			t.Errorf("%s with a client certificate: %d %q", tls.VersionName(v), resp.StatusCode, body)
		}
	}
	if n := served.Load(); n != 2 {
		t.Fatalf("the handler served %d requests, want 2", n)
	}

	failed := func() (n uint64) {
		for _, l := range w.Stats().Loops {
			n += l.TLSFailed
		}
		return n
	}
	for _, tc := range []struct {
		name  string
		certs []tls.Certificate
	}{{"no certificate", nil}, {"another CA's certificate", []tls.Certificate{stranger}}} {
		before := failed()
		cfg := cliCfg.Clone()
		cfg.Certificates = tc.certs
		resp, err := tlsClient(t, cfg).Get("https://" + addr + "/")
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			t.Errorf("%s: %d %q, want a failed handshake", tc.name, resp.StatusCode, b)
			continue
		}
		herdtest.WaitFor(t, "the server to count the failed handshake", func() bool { return failed() > before })
	}
	if n := served.Load(); n != 2 {
		t.Errorf("the handler served %d requests, want 2: clients without a valid certificate reached it", n)
	}
}

// TestBridgeHTTPSRedirect: HTTPS-redirect middleware written as for
// net/http (if r.TLS == nil, redirect to https://r.Host + RequestURI)
// lets TLS requests through (200, not a redirect to itself, which a client
// would follow for ever) and redirects plain ones to the same host, path
// and query.
func TestBridgeHTTPSRedirect(t *testing.T) {
	redirectHTTPS := func(next nethttp.Handler) nethttp.Handler {
		return nethttp.HandlerFunc(func(w nethttp.ResponseWriter, r *nethttp.Request) {
			if r.TLS == nil {
				nethttp.Redirect(w, r, "https://"+r.Host+r.URL.RequestURI(), nethttp.StatusMovedPermanently)
				return
			}
			next.ServeHTTP(w, r)
		})
	}
	app := redirectHTTPS(nethttp.HandlerFunc(func(w nethttp.ResponseWriter, r *nethttp.Request) {
		io.WriteString(w, "secure "+r.URL.RequestURI())
	}))

	srvCfg, cliCfg := herdtest.TLSConfigs(t)
	srvCfg.NextProtos = []string{"http/1.1"}
	tw := &herd.Worker{Addr: "tcp://127.0.0.1:0", Count: 1, TLS: srvCfg, Logger: quietLogger()}
	addr := serveOn(t, &Server{Handler: Bridge(app, 4)}, tw)
	resp, body := getBody(t, tlsClient(t, cliCfg), "https://"+addr+"/account?tab=keys")
	if resp.StatusCode != 200 || body != "secure /account?tab=keys" {
		t.Errorf("over TLS: %d %q (Location %q), want 200", resp.StatusCode, body, resp.Header.Get("Location"))
	}

	if herdtest.OverTLS() {
		return // every worker serves TLS in this mode: no plain request to redirect
	}
	pw := &herd.Worker{Addr: "tcp://127.0.0.1:0", Count: 1, Logger: quietLogger()}
	plain := serveOn(t, &Server{Handler: Bridge(app, 4)}, pw)
	resp, _ = getBody(t, tlsClient(t, nil), "http://"+plain+"/account?tab=keys")
	if loc := resp.Header.Get("Location"); resp.StatusCode != 301 || loc != "https://"+plain+"/account?tab=keys" {
		t.Errorf("over plain HTTP: %d to %q, want 301 to https://%s/account?tab=keys", resp.StatusCode, loc, plain)
	}
}
