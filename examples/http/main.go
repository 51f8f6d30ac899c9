//go:build linux || darwin || freebsd

// Command http is an HTTP/1.1 server on herd:
//
//	GET  /             "Hello, World!" from a handler on the event loop
//	POST /echo         the request body back
//	GET  /std/{name}   a net/http ServeMux route, served through the bridge
//	GET  /status       the per-loop table (?format=json for JSON), through the bridge too
//
// Run it and try it:
//
//	go run ./examples/http -addr tcp://127.0.0.1:8080
//	curl http://127.0.0.1:8080/
//	curl -d 'some body' http://127.0.0.1:8080/echo
//	curl http://127.0.0.1:8080/std/gopher
//	curl http://127.0.0.1:8080/status
//
// The first line of output is the bound address (port 0 picks a free one).
// SIGINT or SIGTERM stops it gracefully.
package main

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
	"github.com/seed358e4494/herd/protocol/http"
	"github.com/seed358e4494/herd/status"
)

func main() {
	if err := run(context.Background(), os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "http:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("http", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", "tcp://127.0.0.1:8080", "listen address")
	count := fs.Int("count", 0, "event loops; 0 means one per CPU")
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
	w := &herd.Worker{Name: "http", Addr: *addr, Count: *count, ReusePort: true, Logger: logger}
	statusRoute := http.Bridge(status.Handler(w), 0)

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
	fmt.Fprintf(stdout, "http: listening on http://%s\n", w.ListenAddr())
	return herd.RunAll(ctx, w)
}
