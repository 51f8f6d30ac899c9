package herdhttp

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	nethttp "net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/seed358e4494/herd"
	"github.com/seed358e4494/herd/internal/herdtest"
)

// TestShutdownEndsKeepAlive: a graceful stop does not close a keep-alive
// connection under a request the client has just sent. Clients that send
// their next request at once (as wrk does) each get a last response with
// Connection: close; an idle client's connection is closed shortly after
// the stop begins. No client sees an error.
func TestShutdownEndsKeepAlive(t *testing.T) {
	s := &Server{Handler: func(w *ResponseWriter, r *Request) { w.WriteString("ok") }}
	w := &herd.Worker{Addr: "tcp://127.0.0.1:0", Count: 2, Logger: quietLogger()}
	addr := serveOn(t, s, w)

	const busy = 50
	var (
		requests, closed atomic.Int64
		wg               sync.WaitGroup
		mu               sync.Mutex
		failures         []error
	)
	fail := func(err error) {
		mu.Lock()
		failures = append(failures, err)
		mu.Unlock()
	}
	for i := range busy {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := net.Dial("tcp", addr)
			if err == nil {
				c, err = herdtest.Client(c)
			}
			if err != nil {
				fail(err)
				return
			}
			defer c.Close()
			br := bufio.NewReader(c)
			for n := 0; ; n++ {
				c.SetDeadline(time.Now().Add(10 * time.Second))
				if _, err := fmt.Fprintf(c, "GET /%d-%d HTTP/1.1\r\nHost: x\r\n\r\n", i, n); err != nil {
					fail(fmt.Errorf("client %d: write: %w", i, err))
					return
				}
				resp, err := nethttp.ReadResponse(br, nil)
				if err != nil {
					fail(fmt.Errorf("client %d, request %d: %w", i, n, err))
					return
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				requests.Add(1)
				if resp.Close {
					closed.Add(1)
					return
				}
			}
		}()
	}
	idle, err := net.Dial("tcp", addr)
	if err == nil {
		idle, err = herdtest.Client(idle)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	herdtest.WaitFor(t, "requests", func() bool { return requests.Load() > 1000 })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	start := time.Now()
	if err := w.Shutdown(ctx); err != nil {
		t.Errorf("Shutdown: %v", err)
	}
	took := time.Since(start)
	wg.Wait()
	for _, err := range failures {
		t.Error(err)
	}
	if n := closed.Load(); n != busy {
		t.Errorf("%d of %d busy clients got a last response with Connection: close", n, busy)
	}
	idle.SetReadDeadline(time.Now().Add(time.Second))
	if n, err := idle.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("the idle connection: %d bytes, %v; want EOF", n, err)
	}
	t.Logf("%d requests; the stop took %v", requests.Load(), took.Round(time.Millisecond))
}
