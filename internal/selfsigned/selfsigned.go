// Package selfsigned makes the certificate the examples serve TLS with when
// they are given none: ECDSA P-256, for localhost and 127.0.0.1, valid for
// a week. Browsers and clients will not trust it; its SHA-256 fingerprint
// lets a person check what they are connected to.
package selfsigned

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"net"
	"strings"
	"time"

	"github.com/seed358e4494/herd"
)

// Certificate makes a new self-signed certificate and returns it with its
// SHA-256 fingerprint (colon-separated hex, as browsers show it).
func Certificate() (tls.Certificate, string, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, "", err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		return tls.Certificate{}, "", err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: "herd example (self-signed)"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(7 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		DNSNames:     []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, "", err
	}
	sum := sha256.Sum256(der)
	hex := make([]string, len(sum))
	for i, b := range sum {
		hex[i] = fmt.Sprintf("%02X", b)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, strings.Join(hex, ":"), nil
}

// Config is a server configuration for the certificate in certFile and
// keyFile, or for a new self-signed one when both are empty; fingerprint
// is the self-signed one's, empty otherwise. ALPN offers http/1.1.
func Config(certFile, keyFile string) (cfg *tls.Config, fingerprint string, err error) {
	var cert tls.Certificate
	if certFile == "" && keyFile == "" {
		cert, fingerprint, err = Certificate()
	} else {
		cert, err = tls.LoadX509KeyPair(certFile, keyFile)
	}
	if err != nil {
		return nil, "", err
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"http/1.1"}}, fingerprint, nil
}

// Setup gives w a TLS configuration when asked (on, or a certificate and
// key given), with a self-signed certificate when given none, and returns
// the URL scheme to show (http or https) and the self-signed
// certificate's fingerprint (empty otherwise).
func Setup(w *herd.Worker, on bool, certFile, keyFile string) (scheme, fingerprint string, err error) {
	if !on && certFile == "" && keyFile == "" {
		return "http", "", nil
	}
	cfg, fingerprint, err := Config(certFile, keyFile)
	if err != nil {
		return "", "", err
	}
	w.TLS = cfg
	return "https", fingerprint, nil
}
