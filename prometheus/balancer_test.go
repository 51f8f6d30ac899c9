package prometheus

import (
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/seed358e4494/herd"
	"github.com/seed358e4494/herd/balancer"
	"github.com/seed358e4494/herd/internal/herdtest"
	"github.com/seed358e4494/herd/internal/loopback"
)

// TestBalancerCollector proxies two connections to an echo backend (one
// more backend refuses and goes down) and compares the scrape.
func TestBalancerCollector(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); io.Copy(c, c) }()
		}
	}()
	deadAddr := loopback.RefusedAddr(t)
	b := &balancer.Balancer{Backends: []balancer.Backend{{Addr: deadAddr}, {Addr: ln.Addr().String()}},
		Health: balancer.HealthCheck{Fall: 1, EjectFor: time.Hour}, Logger: slog.New(slog.DiscardHandler)}
	w := &herd.Worker{Addr: "tcp://127.0.0.1:0", Count: 1, Logger: slog.New(slog.DiscardHandler)}
	if err := b.Attach(w); err != nil {
		t.Fatal(err)
	}
	addr := herdtest.Run(t, w)
	for i := 0; i < 2; i++ {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		c.Write([]byte("hello"))
		buf := make([]byte, 5)
		if _, err := io.ReadFull(c, buf); err != nil {
			t.Fatal(err)
		}
		c.Close()
	}
	herdtest.WaitFor(t, "sessions closed", func() bool { return b.Stats().Backends[1].Active == 0 })
	good := ln.Addr().String()
	want := strings.NewReplacer("DEAD", deadAddr, "GOOD", good).Replace(`
# HELP herd_balancer_backend_connect_errors_total Connects of proxied connections to the backend that failed.
# TYPE herd_balancer_backend_connect_errors_total counter
herd_balancer_backend_connect_errors_total{backend="DEAD",balancer="lb"} 1
herd_balancer_backend_connect_errors_total{backend="GOOD",balancer="lb"} 0
# HELP herd_balancer_backend_received_bytes_total Bytes forwarded from the backend to clients.
# TYPE herd_balancer_backend_received_bytes_total counter
herd_balancer_backend_received_bytes_total{backend="DEAD",balancer="lb"} 0
herd_balancer_backend_received_bytes_total{backend="GOOD",balancer="lb"} 10
# HELP herd_balancer_backend_sent_bytes_total Bytes forwarded from clients to the backend.
# TYPE herd_balancer_backend_sent_bytes_total counter
herd_balancer_backend_sent_bytes_total{backend="DEAD",balancer="lb"} 0
herd_balancer_backend_sent_bytes_total{backend="GOOD",balancer="lb"} 10
# HELP herd_balancer_backend_sessions Proxied connections open to the backend (or connecting).
# TYPE herd_balancer_backend_sessions gauge
herd_balancer_backend_sessions{backend="DEAD",balancer="lb"} 0
herd_balancer_backend_sessions{backend="GOOD",balancer="lb"} 0
# HELP herd_balancer_backend_sessions_total Proxied connections the backend took.
# TYPE herd_balancer_backend_sessions_total counter
herd_balancer_backend_sessions_total{backend="DEAD",balancer="lb"} 0
herd_balancer_backend_sessions_total{backend="GOOD",balancer="lb"} 2
# HELP herd_balancer_backend_up 1 if the backend is up (or draining), 0 if down.
# TYPE herd_balancer_backend_up gauge
herd_balancer_backend_up{backend="DEAD",balancer="lb"} 0
herd_balancer_backend_up{backend="GOOD",balancer="lb"} 1
# HELP herd_balancer_no_backend_total Clients closed because no backend could take them.
# TYPE herd_balancer_no_backend_total counter
herd_balancer_no_backend_total{balancer="lb"} 0
`)
	col := NewBalancerCollector("lb", b)
	if err := testutil.CollectAndCompare(col, strings.NewReader(want), "herd_balancer_backend_connect_errors_total",
		"herd_balancer_backend_received_bytes_total", "herd_balancer_backend_sent_bytes_total", "herd_balancer_backend_sessions",
		"herd_balancer_backend_sessions_total", "herd_balancer_backend_up", "herd_balancer_no_backend_total"); err != nil {
		t.Fatal(err)
	}
	problems, err := testutil.CollectAndLint(col)
	if err != nil || len(problems) != 0 {
		t.Fatalf("lint: %v %v", problems, err)
	}
}
