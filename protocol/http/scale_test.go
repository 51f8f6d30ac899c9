package herdhttp

import (
	"context"
	"fmt"
	"io"
	nethttp "net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/seed358e4494/herd"
	"github.com/seed358e4494/herd/internal/herdtest"
)

// TestScaleKeepAlive: keep-alive clients, whose responses are made half
// synchronously and half on goroutines (Async), go on through Scale
// 4 → 1 → 4 without an error: connections, their pending responses and
// their timeouts move with the loops that leave.
func TestScaleKeepAlive(t *testing.T) {
	s := &Server{
		IdleTimeout: 2 * time.Second,
		Handler: func(w *ResponseWriter, r *Request) {
			body := r.PathString()
			if len(body)%2 == 0 {
				w.WriteString(body)
				return
			}
			w.Async()
			go func() {
				time.Sleep(time.Millisecond)
				w.WriteString(body)
				w.End()
			}()
		},
	}
	w := &herd.Worker{Addr: "tcp://127.0.0.1:0", Count: 4, Logger: quietLogger()}
	addr := serveOn(t, s, w)
	client := &nethttp.Client{
		Transport: &nethttp.Transport{MaxIdleConnsPerHost: 64, DialContext: herdtest.DialContext},
		Timeout:   10 * time.Second,
	}
	defer client.CloseIdleConnections()
	var (
		stop     atomic.Bool
		requests atomic.Int64
		wg       sync.WaitGroup
		mu       sync.Mutex
		failures []error
	)
	for i := range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; !stop.Load(); n++ {
				path := fmt.Sprintf("/c%d-%d", i, n)
				resp, err := client.Get("http://" + addr + path)
				if err == nil {
					var b []byte
					b, err = io.ReadAll(resp.Body)
					resp.Body.Close()
					if err == nil && string(b) != path {
						err = fmt.Errorf("%s: body %q", path, b)
					}
				}
				if err != nil {
					mu.Lock()
					failures = append(failures, err)
					mu.Unlock()
					return
				}
				requests.Add(1)
			}
		}()
	}
	herdtest.WaitFor(t, "requests", func() bool { return requests.Load() > 500 })
	for _, n := range []int{1, 4} {
		before := requests.Load()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if err := w.Scale(ctx, n); err != nil {
			t.Fatalf("Scale(%d): %v", n, err)
		}
		cancel()
		herdtest.WaitFor(t, "requests after Scale", func() bool { return requests.Load() > before+500 })
	}
	stop.Store(true)
	wg.Wait()
	for _, err := range failures {
		t.Error(err)
	}
	st := w.Stats()
	t.Logf("%d requests over Scale 4 → 1 → 4 (loops +%d -%d)", requests.Load(), st.LoopsAdded, st.LoopsRemoved)
}
