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

// TestMetricsRoute runs the server, makes a request, and scrapes /metrics
// on the admin address the server prints: the worker's series are there,
// counting that request, and the page passes Prometheus's linter. On the
// application's address /metrics and /status are 404.
func TestMetricsRoute(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out herdtest.Output
	done := make(chan error, 1)
	go func() {
		done <- app.Run(ctx, []string{"-addr", "tcp://127.0.0.1:0", "-admin", "127.0.0.1:0", "-count", "2"}, &out, io.Discard, metrics)
	}()
	addr := out.ListenAddr(t)
	admin := out.AddrAfter(t, "admin pages on ")
	fetch := func(base, path string) (int, string) {
		resp, err := nethttp.Get("http://" + base + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	get := func(base, path string) string {
		code, body := fetch(base, path)
		if code != 200 {
			t.Fatalf("GET %s on %s: %d", path, base, code)
		}
		return body
	}
	for _, path := range []string{"/metrics", "/status"} {
		if code, body := fetch(addr, path); code != 404 || strings.Contains(body, "herd_") {
			t.Errorf("GET %s on the application's address: %d %.80q, want 404", path, code, body)
		}
	}
	if !strings.Contains(out.String(), "(/metrics, /status)") {
		t.Errorf("the admin line does not list /metrics and /status: %q", out.String())
	}
	get(addr, "/")
	if s := get(admin, "/status"); !strings.Contains(s, `worker "http"`) {
		t.Errorf("/status on the admin address: %q", s)
	}
	page := get(admin, "/metrics")
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
