package herdhttp

import (
	"bytes"
	"crypto/tls"
	"io"
	nethttp "net/http"
	"testing"
	"time"

	"github.com/seed358e4494/herd"
	"github.com/seed358e4494/herd/internal/herdtest"
)

// TestHTTPS: the server over TLS (herd.Worker.TLS), with ALPN http/1.1,
// to Go's client: keep-alive requests, and a 1 MiB body each way.
func TestHTTPS(t *testing.T) {
	srvCfg, cliCfg := herdtest.TLSConfigs(t)
	srvCfg.NextProtos = []string{"http/1.1"}
	cliCfg.NextProtos = []string{"http/1.1"}
	s := &Server{Handler: func(w *ResponseWriter, r *Request) {
		if string(r.Method()) == "POST" {
			w.Write(r.Body())
			return
		}
		w.WriteString("hello over " + tls.VersionName(r.Conn().TLS().Version))
	}}
	w := &herd.Worker{Addr: "tcp://127.0.0.1:0", Count: 2, TLS: srvCfg, Logger: quietLogger()}
	addr := serveOn(t, s, w)
	client := &nethttp.Client{Timeout: 20 * time.Second, Transport: &nethttp.Transport{TLSClientConfig: cliCfg, ForceAttemptHTTP2: false}}
	defer client.CloseIdleConnections()
	for range 3 {
		resp, err := client.Get("https://" + addr + "/")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(b) != "hello over TLS 1.3" || resp.TLS == nil || resp.TLS.NegotiatedProtocol != "http/1.1" {
			t.Fatalf("%q, TLS %+v", b, resp.TLS)
		}
	}
	big := bytes.Repeat([]byte("0123456789abcdef"), 1<<16)
	resp, err := client.Post("https://"+addr+"/echo", "application/octet-stream", bytes.NewReader(big))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !bytes.Equal(b, big) {
		t.Fatalf("1 MiB echo: %d bytes back", len(b))
	}
	var handshakes uint64
	for _, l := range w.Stats().Loops {
		handshakes += l.TLSHandshakes
	}
	if handshakes != 1 {
		t.Errorf("%d handshakes for one keep-alive client, want 1", handshakes)
	}
}
