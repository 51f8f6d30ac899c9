package prometheus

import (
	"fmt"
	"runtime"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/seed358e4494/herd/internal/herdtest"
)

// TestCollectorKernelDrops: herd_loop_kernel_dropped_datagrams_total is a
// counter with Stats' KernelDrops: the one loop of a udp:// worker is held
// on its first datagram while 10,000 more overflow its socket.
func TestCollectorKernelDrops(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("kernel drops are counted on Linux only")
	}
	w := herdtest.OverflowedUDP(t, "dns")
	drops := w.Stats().Loops[0].KernelDrops
	want := fmt.Sprintf(`
# HELP herd_loop_kernel_dropped_datagrams_total Datagrams (udp://) the kernel dropped because the socket's receive buffer was full (Linux only).
# TYPE herd_loop_kernel_dropped_datagrams_total counter
herd_loop_kernel_dropped_datagrams_total{loop="0",worker="dns"} %d
`, drops)
	if err := testutil.CollectAndCompare(NewCollector(w), strings.NewReader(want), "herd_loop_kernel_dropped_datagrams_total"); err != nil {
		t.Fatal(err)
	}
}
