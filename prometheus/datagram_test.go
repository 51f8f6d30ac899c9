package prometheus

import (
	"fmt"
	"log/slog"
	"net"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/seed358e4494/herd"
	"github.com/seed358e4494/herd/internal/herdtest"
)

// TestCollectorKernelDrops: herd_loop_kernel_dropped_datagrams_total is a
// counter with Stats' KernelDrops: the one loop of a udp:// worker is held
// on its first datagram while 10,000 more overflow its socket.
func TestCollectorKernelDrops(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("kernel drops are counted on Linux only")
	}
	gate := make(chan struct{})
	var first sync.Once
	var marker atomic.Int64
	w := &herd.Worker{Name: "dns", Addr: "udp://127.0.0.1:0", Count: 1, Logger: slog.New(slog.DiscardHandler),
		OnPacket: func(p *herd.Packet, msg []byte) {
			first.Do(func() { <-gate })
			if n, err := strconv.Atoi(strings.TrimPrefix(string(msg), "end ")); err == nil {
				marker.Store(int64(n))
			}
		}}
	addr := herdtest.Run(t, w)
	c, err := net.Dial("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	payload := make([]byte, 1400)
	for range 10_000 {
		c.Write(payload)
	}
	close(gate)
	// The kernel gives its count with the next datagram it queues: send
	// markers until the last one sent is read.
	for n := int64(1); ; n++ {
		if n > 100 {
			t.Fatal("no marker read")
		}
		fmt.Fprintf(c, "end %d", n)
		for end := time.Now().Add(100 * time.Millisecond); marker.Load() != n && time.Now().Before(end); {
			time.Sleep(time.Millisecond)
		}
		if marker.Load() == n {
			break
		}
	}
	drops := w.Stats().Loops[0].KernelDrops
	if drops == 0 {
		t.Fatal("the flood did not overflow the socket")
	}
	want := fmt.Sprintf(`
# HELP herd_loop_kernel_dropped_datagrams_total Datagrams (udp://) the kernel dropped because the socket's receive buffer was full (Linux only).
# TYPE herd_loop_kernel_dropped_datagrams_total counter
herd_loop_kernel_dropped_datagrams_total{loop="0",worker="dns"} %d
`, drops)
	if err := testutil.CollectAndCompare(NewCollector(w), strings.NewReader(want), "herd_loop_kernel_dropped_datagrams_total"); err != nil {
		t.Fatal(err)
	}
}
