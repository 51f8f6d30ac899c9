package prometheus_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/seed358e4494/herd"
	herdprom "github.com/seed358e4494/herd/prometheus"
)

// Serve a worker's figures on /metrics.
func ExampleNewCollector() {
	w := &herd.Worker{Name: "echo", Addr: "text://127.0.0.1:0", Count: 2, Logger: slog.New(slog.DiscardHandler)}
	w.OnMessage = func(c *herd.Conn, msg []byte) { c.Send(msg) }
	w.Listen()
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	go w.Run(ctx)

	reg := prometheus.NewRegistry()
	reg.MustRegister(herdprom.NewCollector(w))
	srv := httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	defer srv.Close()

	resp, err := http.Get(srv.URL)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(line, "herd_loop_connections_accepted_total") {
			fmt.Println(line)
		}
	}
	// Output:
	// herd_loop_connections_accepted_total{loop="0",worker="echo"} 0
	// herd_loop_connections_accepted_total{loop="1",worker="echo"} 0
}
