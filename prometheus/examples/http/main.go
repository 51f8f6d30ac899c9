//go:build linux || darwin || freebsd

// Command http is examples/http with /metrics: the worker's per-loop
// figures in Prometheus's format, read from Stats on each scrape, with the
// Go runtime's and the process's. /metrics is served beside /status on
// the admin address (-admin, 127.0.0.1:9091 by default), not on the
// application's, where both are 404: point Prometheus at the admin
// address (bind it to a private network the scraper reaches, never to the
// public one: it has no authentication).
//
//	cd prometheus && go run ./examples/http -addr tcp://127.0.0.1:8080
//	curl http://127.0.0.1:9091/metrics
//
// It lives in the prometheus module because the core module (and so
// examples/http) depends on golang.org/x/sys only.
package main

import (
	"context"
	"fmt"
	nethttp "net/http"
	"os"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/seed358e4494/herd"
	"github.com/seed358e4494/herd/examples/http/app"
	herdprom "github.com/seed358e4494/herd/prometheus"
)

func main() {
	if err := app.Run(context.Background(), os.Args[1:], os.Stdout, os.Stderr, metrics); err != nil {
		fmt.Fprintln(os.Stderr, "http:", err)
		os.Exit(1)
	}
}

// metrics serves the worker's registry at /metrics (on the admin address).
func metrics(w *herd.Worker) map[string]nethttp.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(herdprom.NewCollector(w), collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return map[string]nethttp.Handler{"/metrics": promhttp.HandlerFor(reg, promhttp.HandlerOpts{})}
}
