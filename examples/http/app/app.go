//go:build linux || darwin || freebsd

// Package app is the HTTP example server, as a package: examples/http runs
// it, and so does the prometheus module's variant, which adds /metrics to
// its admin pages.
package app

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	nethttp "net/http"
	"os"
	"slices"
	"strings"

	"github.com/seed358e4494/herd"
	"github.com/seed358e4494/herd/internal/selfsigned"
	"github.com/seed358e4494/herd/protocol/http"
	"github.com/seed358e4494/herd/status"
	"github.com/seed358e4494/herd/upgrade"
)

// Run parses args as the command's flags and serves until ctx ends or a
// stop signal arrives (see upgrade.Process; SIGHUP upgrades).
//
// The operator pages (status.Handler's per-loop table and connection
// listing at /status, and the handlers routes gives) are served on a
// separate admin address, -admin, loopback by default: /status?conns=N
// lists every client's address and idle time, which is for the operator,
// not for anyone who can reach the application. On the application's
// address those paths are 404. routes, if not nil, gives net/http handlers
// by exact path for the admin address, served through the bridge: how the
// prometheus module's variant of this command adds /metrics. -admin ""
// serves no operator pages.
func Run(ctx context.Context, args []string, stdout, stderr io.Writer, routes func(*herd.Worker) map[string]nethttp.Handler) error {
	fs := flag.NewFlagSet("http", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", "tcp://127.0.0.1:8080", "listen address")
	adminAddr := fs.String("admin", DefaultAdminAddr, "address of the operator pages (/status, and /metrics in the prometheus variant), plain HTTP with no authentication: keep it on loopback or a private network; empty: none")
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
	std := herdhttp.Bridge(mux, 0)
	logger := slog.New(slog.NewTextHandler(stderr, nil))
	w := &herd.Worker{Name: "http", Addr: *addr, Count: *count, ReusePort: true, StopTimeout: *stopTimeout, Logger: logger}
	scheme, fingerprint, err := selfsigned.Setup(w, *useTLS, *certFile, *keyFile)
	if err != nil {
		return err
	}

	hello := []byte("Hello, World!")
	srv := &herdhttp.Server{Handler: func(w *herdhttp.ResponseWriter, r *herdhttp.Request) {
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
		default:
			herdhttp.Error(w, nethttp.StatusNotFound)
		}
	}}
	if err := srv.Attach(w); err != nil {
		return err
	}
	workers := []*herd.Worker{w}
	var admin *herd.Worker
	var pages []string
	if *adminAddr != "" {
		admin, pages, err = adminWorker(w, *adminAddr, routes, logger)
		if err != nil {
			return err
		}
		workers = append(workers, admin)
	}
	// The Process binds, taking the sockets an upgrade's old process
	// handed over, so that the addresses are known before it runs.
	p := &upgrade.Process{Workers: workers, UpgradeGrace: *grace}
	if err := p.Listen(); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "http: listening on %s://%s pid %d\n", scheme, w.ListenAddr(), os.Getpid())
	if admin != nil {
		fmt.Fprintf(stdout, "http: admin pages on http://%s (%s)\n", admin.ListenAddr(), strings.Join(pages, ", "))
		if !private(admin.ListenAddr()) {
			logger.Warn("http: the admin pages are reachable beyond this machine, in plain HTTP with no authentication, and /status?conns lists every client's address: keep -admin on loopback or a private network",
				"admin", admin.ListenAddr().String())
		}
	}
	if fingerprint != "" {
		fmt.Fprintf(stdout, "http: self-signed certificate, SHA-256 fingerprint %s\n", fingerprint)
	}
	return p.Run(ctx)
}

// DefaultAdminAddr is where the operator pages are served unless -admin
// says otherwise: loopback, so only this machine reaches them.
const DefaultAdminAddr = "127.0.0.1:9091"

// adminWorker is a one-loop worker named "admin" serving the operator
// pages at addr (host:port, or a herd address such as
// unix:///run/herd-admin.sock): /status for app, and what routes gives.
// Named and addressed the same in every generation, it hands its
// listening socket on across upgrades as the application's worker does.
// It returns the paths it serves, sorted.
func adminWorker(app *herd.Worker, addr string, routes func(*herd.Worker) map[string]nethttp.Handler, logger *slog.Logger) (*herd.Worker, []string, error) {
	if !strings.Contains(addr, "://") {
		addr = "tcp://" + addr
	}
	mux := nethttp.NewServeMux()
	handlers := map[string]nethttp.Handler{"/status": status.Handler(app)}
	if routes != nil {
		for path, h := range routes(app) {
			handlers[path] = h
		}
	}
	var pages []string
	for path, h := range handlers {
		mux.Handle(path, h)
		pages = append(pages, path)
	}
	slices.Sort(pages)
	w := &herd.Worker{Name: "admin", Addr: addr, Count: 1, StopTimeout: app.StopTimeout, Logger: logger}
	srv := &herdhttp.Server{Handler: herdhttp.Bridge(mux, 8)}
	if err := srv.Attach(w); err != nil {
		return nil, nil, err
	}
	return w, pages, nil
}

// private reports whether a is reachable from this machine only: a
// loopback address or a unix socket.
func private(a net.Addr) bool {
	switch a := a.(type) {
	case *net.TCPAddr:
		return a.IP.IsLoopback()
	case *net.UnixAddr:
		return true
	}
	return false
}
