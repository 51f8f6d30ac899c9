package herdtest

import (
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/seed358e4494/herd"
)

// OverflowedUDP runs a one-loop udp:// worker named name whose socket the
// kernel has had to drop datagrams for: its loop is held on its first
// datagram while 10,000 more flood the socket, then markers are sent until
// the last one is read, since the kernel gives its drop count with the
// next datagram it queues. It fails t if nothing was dropped (Linux only:
// the caller skips elsewhere).
func OverflowedUDP(t testing.TB, name string) *herd.Worker {
	t.Helper()
	gate := make(chan struct{})
	var first sync.Once
	var marker atomic.Int64
	w := &herd.Worker{Name: name, Addr: "udp://127.0.0.1:0", Count: 1, Logger: slog.New(slog.DiscardHandler),
		OnPacket: func(p *herd.Packet, msg []byte) {
			first.Do(func() { <-gate })
			if n, err := strconv.Atoi(strings.TrimPrefix(string(msg), "end ")); err == nil {
				marker.Store(int64(n))
			}
		}}
	addr := Run(t, w)
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
	if w.Stats().Loops[0].KernelDrops == 0 {
		t.Fatal("the flood did not overflow the socket")
	}
	return w
}
