//go:build linux

package main

import (
	"context"
	"io"
	nethttp "net/http"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"

	"github.com/seed358e4494/herd/examples/http/app"
	"github.com/seed358e4494/herd/internal/herdtest"
)

// TestMetricsRoute runs the server, makes a request, and scrapes /metrics:
// the worker's series are there, counting that request, and the page
// passes Prometheus's linter.
func TestMetricsRoute(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out herdtest.Output
	done := make(chan error, 1)
	go func() {
		done <- app.Run(ctx, []string{"-addr", "tcp://127.0.0.1:0", "-count", "2"}, &out, io.Discard, metrics)
	}()
	addr := out.ListenAddr(t)
	get := func(path string) string {
		resp, err := nethttp.Get("http://" + addr + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 {
			t.Fatalf("GET %s: %s", path, resp.Status)
		}
		return string(b)
	}
	get("/")
	page := get("/metrics")
	for _, want := range []string{`herd_worker_loops{worker="http"} 2`, `herd_loop_busy_seconds_total{loop="1",worker="http"}`, "go_goroutines"} {
		if !strings.Contains(page, want) {
			t.Errorf("/metrics has no %s", want)
		}
	}
	problems, err := promlint.New(strings.NewReader(page)).Lint()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		if strings.HasPrefix(p.Metric, "herd_") {
			t.Errorf("lint: %s: %s", p.Metric, p.Text)
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run: %v", err)
	}
}
