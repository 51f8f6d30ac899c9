package herdtest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/seed358e4494/herd/internal/selfsigned"
)

// TLSConfigs makes a self-signed ECDSA P-256 certificate for 127.0.0.1 and
// localhost (internal/selfsigned, as the examples serve), and returns a
// server configuration that presents it and a client configuration that
// trusts it.
func TLSConfigs(t testing.TB) (server, client *tls.Config) {
	t.Helper()
	server, client, err := configs()
	if err != nil {
		t.Fatal(err)
	}
	return server, client
}

func configs() (server, client *tls.Config, err error) {
	cert, _, err := selfsigned.Certificate()
	if err != nil {
		return nil, nil, err
	}
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		return nil, nil, err
	}
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	return &tls.Config{Certificates: []tls.Certificate{cert}}, &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"}, nil
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
	shared.once.Do(func() {
		var err error
		if shared.server, shared.client, err = configs(); err != nil {
			panic(err) // no test can run over TLS without it
		}
	})
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

// ClientCert makes a certificate authority and a client certificate it
// signed for commonName (ECDSA P-256, for client authentication, valid for
// a day), for tests of mutual TLS: the server verifies clients with cas
// (tls.Config.ClientCAs), the client presents cert
// (tls.Config.Certificates).
func ClientCert(t testing.TB, commonName string) (cas *x509.CertPool, cert tls.Certificate) {
	t.Helper()
	newKey := func() *ecdsa.PrivateKey {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	now := time.Now()
	caKey := newKey()
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "herd test client CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	key := newKey()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: commonName, Organization: []string{"herd tests"}},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	cas = x509.NewCertPool()
	cas.AddCert(ca)
	return cas, tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}
