package herdhttp_test

import (
	"context"
	"fmt"
	"io"
	nethttp "net/http"
	"strings"

	"github.com/seed358e4494/herd"
	"github.com/seed358e4494/herd/protocol/http"
)

// serve runs w until the returned stop is called.
func serve(w *herd.Worker) (addr string, stop func()) {
	if err := w.Listen(); err != nil {
		panic(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { w.Run(ctx); close(done) }()
	return w.ListenAddr().String(), func() { cancel(); <-done }
}

func get(client *nethttp.Client, url string) {
	resp, err := client.Get(url)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	fmt.Println(resp.StatusCode, strings.TrimSpace(string(b)))
}

// A typed handler on the loop: the request is a view of the read buffer,
// and the response is written without allocating.
func ExampleServer() {
	w := &herd.Worker{Addr: "tcp://127.0.0.1:0", Count: 2}
	s := &herdhttp.Server{Handler: func(w *herdhttp.ResponseWriter, r *herdhttp.Request) {
		switch string(r.Path()) {
		case "/hello":
			w.Header().Set("Content-Type", "text/plain")
			w.Write([]byte("Hello, "))
			name, ok := r.Query("name")
			if !ok {
				name = []byte("World")
			}
			w.Write(name)
		default:
			herdhttp.Error(w, 404)
		}
	}}
	if err := s.Attach(w); err != nil {
		fmt.Println(err)
		return
	}
	addr, stop := serve(w)
	defer stop()

	client := &nethttp.Client{}
	defer client.CloseIdleConnections()
	get(client, "http://"+addr+"/hello")
	get(client, "http://"+addr+"/hello?name=herd")
	get(client, "http://"+addr+"/other")
	// Output:
	// 200 Hello, World
	// 200 Hello, herd
	// 404 404 Not Found
}

// A standard net/http ServeMux, with method and wildcard patterns, served
// on herd through Bridge: handlers run in a bounded pool off the loop.
func ExampleBridge() {
	mux := nethttp.NewServeMux()
	mux.HandleFunc("GET /items/{id}", func(w nethttp.ResponseWriter, r *nethttp.Request) {
		fmt.Fprintf(w, "item %s", r.PathValue("id"))
	})
	w := &herd.Worker{Addr: "tcp://127.0.0.1:0", Count: 1}
	s := &herdhttp.Server{Handler: herdhttp.Bridge(mux, 0)}
	if err := s.Attach(w); err != nil {
		fmt.Println(err)
		return
	}
	addr, stop := serve(w)
	defer stop()

	client := &nethttp.Client{}
	defer client.CloseIdleConnections()
	get(client, "http://"+addr+"/items/42")
	get(client, "http://"+addr+"/items")
	// Output:
	// 200 item 42
	// 404 404 page not found
}

// Async finishes a response from another goroutine; responses still leave
// in request order.
func ExampleResponseWriter_Async() {
	w := &herd.Worker{Addr: "tcp://127.0.0.1:0", Count: 1}
	s := &herdhttp.Server{Handler: func(w *herdhttp.ResponseWriter, r *herdhttp.Request) {
		path := r.PathString() // a copy: r is not valid after the handler returns
		w.Async()
		go func() {
			fmt.Fprintf(w, "slow answer for %s", path)
			w.End()
		}()
	}}
	s.Attach(w)
	addr, stop := serve(w)
	defer stop()

	client := &nethttp.Client{}
	defer client.CloseIdleConnections()
	get(client, "http://"+addr+"/report")
	// Output:
	// 200 slow answer for /report
}
