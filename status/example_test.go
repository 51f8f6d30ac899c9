//go:build linux || darwin || freebsd

package status_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"

	"github.com/seed358e4494/herd"
	"github.com/seed358e4494/herd/status"
)

// The per-loop table of a running worker, over HTTP.
func ExampleHandler() {
	w := &herd.Worker{Name: "echo", Addr: "text://127.0.0.1:0", Count: 2, Logger: slog.New(slog.DiscardHandler)}
	w.OnMessage = func(c *herd.Conn, msg []byte) { c.Send(msg) }
	w.Listen()
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	go w.Run(ctx)

	srv := httptest.NewServer(status.Handler(w))
	defer srv.Close()
	resp, err := http.Get(srv.URL)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer resp.Body.Close()
	text, _ := io.ReadAll(resp.Body)
	header, _, _ := strings.Cut(string(text), " loops=")
	fmt.Println(header)
	// Output: worker "echo" mode=shared
}
