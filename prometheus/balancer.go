package prometheus

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/seed358e4494/herd/balancer"
)

// BalancerCollector is a prometheus.Collector for a balancer's backends
// (labels balancer, backend), read from its Stats at each scrape:
//
//	herd_balancer_backend_up                      gauge: 1 up (or draining), 0 down
//	herd_balancer_backend_draining                gauge: 1 while draining
//	herd_balancer_backend_weight                  gauge: the effective weight (less during slow start)
//	herd_balancer_backend_sessions                gauge: proxied connections open (or connecting)
//	herd_balancer_backend_sessions_total          counter: proxied connections it took
//	herd_balancer_backend_sent_bytes_total        counter: bytes from clients to it
//	herd_balancer_backend_received_bytes_total    counter: bytes from it to clients
//	herd_balancer_backend_connect_errors_total    counter
//	herd_balancer_backend_check_failures_total    counter
//	herd_balancer_backend_down_seconds_total      counter
//	herd_balancer_no_backend_total                counter (label balancer): clients closed with no backend left
type BalancerCollector struct {
	name string
	b    *balancer.Balancer
}

// NewBalancerCollector collects b's figures under the balancer label name.
func NewBalancerCollector(name string, b *balancer.Balancer) *BalancerCollector {
	return &BalancerCollector{name: name, b: b}
}

var (
	backendLabels    = []string{"balancer", "backend"}
	descBackendUp    = prometheus.NewDesc("herd_balancer_backend_up", "1 if the backend is up (or draining), 0 if down.", backendLabels, nil)
	descBackendDrain = prometheus.NewDesc("herd_balancer_backend_draining", "1 while the backend is draining (no new connections).", backendLabels, nil)
	descBackendW     = prometheus.NewDesc("herd_balancer_backend_weight", "The backend's effective weight (less during slow start, 0 while down or draining).", backendLabels, nil)
	descSessions     = prometheus.NewDesc("herd_balancer_backend_sessions", "Proxied connections open to the backend (or connecting).", backendLabels, nil)
	descSessionsTot  = prometheus.NewDesc("herd_balancer_backend_sessions_total", "Proxied connections the backend took.", backendLabels, nil)
	descBackendSent  = prometheus.NewDesc("herd_balancer_backend_sent_bytes_total", "Bytes forwarded from clients to the backend.", backendLabels, nil)
	descBackendRecv  = prometheus.NewDesc("herd_balancer_backend_received_bytes_total", "Bytes forwarded from the backend to clients.", backendLabels, nil)
	descConnectErrs  = prometheus.NewDesc("herd_balancer_backend_connect_errors_total", "Connects of proxied connections to the backend that failed.", backendLabels, nil)
	descCheckFails   = prometheus.NewDesc("herd_balancer_backend_check_failures_total", "Active health checks of the backend that failed.", backendLabels, nil)
	descDownSeconds  = prometheus.NewDesc("herd_balancer_backend_down_seconds_total", "Time the backend has been down.", backendLabels, nil)
	descNoBackend    = prometheus.NewDesc("herd_balancer_no_backend_total", "Clients closed because no backend could take them.", []string{"balancer"}, nil)
	balancerDescs    = []*prometheus.Desc{descBackendUp, descBackendDrain, descBackendW, descSessions, descSessionsTot, descBackendSent, descBackendRecv, descConnectErrs, descCheckFails, descDownSeconds, descNoBackend}
)

// Describe implements prometheus.Collector.
func (c *BalancerCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range balancerDescs {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *BalancerCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.b.Stats()
	flag := func(b bool) float64 {
		if b {
			return 1
		}
		return 0
	}
	for _, be := range s.Backends {
		m := func(d *prometheus.Desc, t prometheus.ValueType, v float64) {
			ch <- prometheus.MustNewConstMetric(d, t, v, c.name, be.Addr)
		}
		m(descBackendUp, gauge, flag(be.State != balancer.Down))
		m(descBackendDrain, gauge, flag(be.State == balancer.Draining))
		m(descBackendW, gauge, be.EffectiveWeight)
		m(descSessions, gauge, float64(be.Active))
		m(descSessionsTot, counter, float64(be.Total))
		m(descBackendSent, counter, float64(be.BytesIn))
		m(descBackendRecv, counter, float64(be.BytesOut))
		m(descConnectErrs, counter, float64(be.ConnectErrors))
		m(descCheckFails, counter, float64(be.ChecksFailed))
		m(descDownSeconds, counter, be.DownTime.Seconds())
	}
	ch <- prometheus.MustNewConstMetric(descNoBackend, counter, float64(s.NoBackend), c.name)
}
