//go:build linux || darwin || freebsd

// Command http is an HTTP/1.1 server on herd:
//
//	GET  /             "Hello, World!" from a handler on the event loop
//	POST /echo         the request body back
//	GET  /std/{name}   a net/http ServeMux route, served through the bridge
//
// and, on a separate admin address (-admin, 127.0.0.1:9091 by default:
// loopback, so only this machine reaches it; "" turns it off):
//
//	GET  /status       the per-loop table (?format=json for JSON), through
//	                   the bridge too; ?conns=N lists open connections with
//	                   each client's address and idle time
//
// On the application's address /status is a 404: what it tells is for the
// operator. Serve the admin address beyond loopback only on a private
// network or behind authentication (the command warns if it is not
// loopback).
//
// Run it and try it:
//
//	go run ./examples/http -addr tcp://127.0.0.1:8080
//	curl http://127.0.0.1:8080/
//	curl -d 'some body' http://127.0.0.1:8080/echo
//	curl http://127.0.0.1:8080/std/gopher
//	curl http://127.0.0.1:9091/status
//
// The first line of output is the bound address (port 0 picks a free one)
// and the process ID, the second the admin address. SIGINT or SIGTERM
// stops it gracefully. SIGHUP upgrades it without failing a connection:
// the executable is started again (rebuild it first to run new code),
// takes over both listening sockets, and this process drains and exits
// (see upgrade.Process). The prometheus module's prometheus/examples/http is
// this server with /metrics on the admin address.
package main

import (
	"context"
	"fmt"
	"os"

	"github.com/seed358e4494/herd/examples/http/app"
)

func main() {
	if err := app.Run(context.Background(), os.Args[1:], os.Stdout, os.Stderr, nil); err != nil {
		fmt.Fprintln(os.Stderr, "http:", err)
		os.Exit(1)
	}
}
