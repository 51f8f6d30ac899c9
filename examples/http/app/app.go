//go:build linux || darwin || freebsd

// Package app is the HTTP example server, as a package: examples/http runs
// it, and so does the prometheus module's variant, which adds /metrics.
package app

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	nethttp "net/http"
	"os"
	"strings"

	"github.com/seed358e4494/herd"
	"github.com/seed358e4494/herd/internal/selfsigned"
	"github.com/seed358e4494/herd/protocol/http"
	"github.com/seed358e4494/herd/status"
)

// Run parses args as the command's flags and serves until ctx ends or a
// stop signal arrives (see herd.Process; SIGHUP upgrades). routes, if not
// nil, gives net/http handlers by exact path for the worker, served
// through the bridge: how the prometheus module's variant of this command
// adds /metrics.
func Run(ctx context.Context, args []string, stdout, stderr io.Writer, routes func(*herd.Worker) map[string]nethttp.Handler) error {
	fs := flag.NewFlagSet("http", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", "tcp://127.0.0.1:8080", "listen address")
	count := fs.Int("count", 0, "event loops; 0 means one per CPU")
	useTLS := fs.Bool("tls", false, "serve TLS (https, wss); without -cert and -key, with a self-signed certificate made at start")
	certFile := fs.String("cert", "", "TLS certificate (PEM); implies -tls")
	keyFile := fs.String("key", "", "TLS key (PEM)")
	stopTimeout := fs.Duration("stop-timeout", herd.DefaultStopTimeout, "graceful stop's bound (SIGTERM, and after an upgrade)")
	grace := fs.Duration("upgrade-grace", 0, "after an upgrade, how long this process serves its connections before it stops")
	if err := fs.Parse(args); err != nil {
		return err
	}

	// Routes people already have, written for net/http, run unchanged
	// through the bridge (on a bounded pool of goroutines).
	mux := nethttp.NewServeMux()
	mux.HandleFunc("GET /std/{name}", func(w nethttp.ResponseWriter, r *nethttp.Request) {
		fmt.Fprintf(w, "Hello, %s, from net/http!\n", r.PathValue("name"))
	})
	std := http.Bridge(mux, 0)
	logger := slog.New(slog.NewTextHandler(stderr, nil))
	w := &herd.Worker{Name: "http", Addr: *addr, Count: *count, ReusePort: true, StopTimeout: *stopTimeout, Logger: logger}
	scheme, fingerprint, err := selfsigned.Setup(w, *useTLS, *certFile, *keyFile)
	if err != nil {
		return err
	}
	statusRoute := http.Bridge(status.Handler(w), 0)
	bridged := map[string]http.Handler{}
	if routes != nil {
		for path, h := range routes(w) {
			bridged[path] = http.Bridge(h, 0)
		}
	}

	hello := []byte("Hello, World!")
	srv := &http.Server{Handler: func(w *http.ResponseWriter, r *http.Request) {
		path := r.Path()
		switch {
		case string(path) == "/":
			w.Header().Set("Content-Type", "text/plain")
			w.Write(hello)
		case string(path) == "/echo" && string(r.Method()) == "POST":
			w.Header().Set("Content-Type", "application/octet-stream")
			w.Write(r.Body())
		case strings.HasPrefix(string(path), "/std/"):
			std(w, r)
		case string(path) == "/status":
			statusRoute(w, r)
		case bridged[string(path)] != nil:
			bridged[string(path)](w, r)
		default:
			http.Error(w, nethttp.StatusNotFound)
		}
	}}

	if err := srv.Attach(w); err != nil {
		return err
	}
	if err := w.Listen(); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "http: listening on %s://%s pid %d\n", scheme, w.ListenAddr(), os.Getpid())
	if fingerprint != "" {
		fmt.Fprintf(stdout, "http: self-signed certificate, SHA-256 fingerprint %s\n", fingerprint)
	}
	p := &herd.Process{Workers: []*herd.Worker{w}, UpgradeGrace: *grace}
	return p.Run(ctx)
}
