package herdtest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"net"
	"os"
	"sync"
	"testing"
	"time"
)

// TLSConfigs makes a self-signed ECDSA P-256 certificate for 127.0.0.1 and
// localhost, and returns a server configuration that presents it and a
// client configuration that trusts it.
func TLSConfigs(t testing.TB) (server, client *tls.Config) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "herd test"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		DNSNames:              []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	server = &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key, Leaf: cert}}}
	client = &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"}
	return server, client
}

// OverTLS reports whether the tests run over TLS (HERD_TEST_TLS set): Run
// then gives the worker a certificate, and Client wraps the test's
// connections, so that a package's own loopback tests run over TLS too.
func OverTLS() bool { return os.Getenv("HERD_TEST_TLS") != "" }

var shared struct {
	once           sync.Once
	server, client *tls.Config
}

// SharedTLS is one pair of configurations (see TLSConfigs) for the whole
// test binary.
func SharedTLS() (server, client *tls.Config) {
	shared.once.Do(func() { shared.server, shared.client = TLSConfigs(panicTB{}) })
	return shared.server.Clone(), shared.client.Clone()
}

// Client is c as the test's client speaks on it: c itself, or a TLS
// client over it (handshake done) when the tests run over TLS.
func Client(c net.Conn) (net.Conn, error) {
	if !OverTLS() {
		return c, nil
	}
	_, cli := SharedTLS()
	tc := tls.Client(c, cli)
	tc.SetDeadline(time.Now().Add(10 * time.Second))
	if err := tc.Handshake(); err != nil {
		c.Close()
		return nil, err
	}
	tc.SetDeadline(time.Time{})
	return tc, nil
}

// DialContext dials addr and wraps the connection with Client: for an
// http.Transport, so that "http://" URLs reach a server that runs over
// TLS in this mode.
func DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	return Client(c)
}

// CloseWrite ends the client's side: a TCP half-close, or a TLS
// close_notify, which a herd server reads as the end of the stream too.
func CloseWrite(c net.Conn) error {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// panicTB lets TLSConfigs run outside a test: a failure there panics.
type panicTB struct{ testing.TB }

func (panicTB) Helper()                   {}
func (panicTB) Fatal(args ...any)         { panic(fmt.Sprint(args...)) }
func (panicTB) Fatalf(f string, a ...any) { panic(fmt.Sprintf(f, a...)) }
