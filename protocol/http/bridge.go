package herdhttp

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	nethttp "net/http"
	"net/url"
	"strings"
	"sync/atomic"
)

// Bridge serves a standard net/http Handler (a ServeMux, a router, any
// middleware) on herd. Each request is copied into a real *net/http.Request
// (Method, URL, Proto, Header, Host, ContentLength, TransferEncoding, Body,
// Close, RemoteAddr, RequestURI, TLS, and a context that holds
// http.LocalAddrContextKey and is cancelled when the handler returns or the
// connection closes) and served off the loop by a bounded
// pool of at most workers goroutines (zero or negative means
// DefaultBridgeWorkers), started on demand and gone when idle. Handlers
// are usually waiting on I/O (a database, another service), so the bound
// is about how many may wait at once, not the number of CPUs: with 100 ms
// handlers, 1,024 workers serve about 10,000 requests a second; size it
// for CPU-bound handlers if that is what they are. The response goes back
// through the loop with ResponseWriter.Async, so pipelined responses keep
// their order, and its Write waits for the client as net/http's does.
//
// When all workers are busy, requests wait in a queue of 16×workers; a
// request that finds the queue full is answered 503 Service Unavailable
// with Retry-After: 1 (no head-of-line blocking of the loop, and the
// client learns at once).
//
// The http.ResponseWriter given to the handler implements http.Flusher
// (Flush streams: chunked for HTTP/1.1). It does not implement
// http.Hijacker: hijacking, and so upgrades through net/http, are not
// supported (use ResponseWriter.Upgrade in a herd Handler). Informational
// statuses (1xx) written by the handler are ignored. Without a
// Content-Type, the first Write's bytes choose one, as net/http does.
// A handler that panics gets a 500 if nothing was written yet, else its
// connection is closed; http.ErrAbortHandler closes it without a log.
//
// On a worker with TLS, r.TLS is the connection's TLS state (Request.TLS:
// version, cipher suite, SNI server name, ALPN protocol, the client's
// verified certificates under mutual TLS), as net/http's server sets it,
// and nil otherwise: middleware that redirects when r.TLS == nil, sets
// Secure cookies, or reads client certificates works unchanged. As with
// net/http, r.URL.Scheme and r.URL.Host are empty unless the client sent
// an absolute-form target, and r.Host is the Host field (or that
// target's authority).
func Bridge(h nethttp.Handler, workers int) Handler {
	return newBridge(h, workers).serve
}

// DefaultBridgeWorkers is the number of goroutines Bridge serves with at
// most when not told: enough for handlers that wait on I/O.
const DefaultBridgeWorkers = 1024

func newBridge(h nethttp.Handler, workers int) *bridge {
	if workers <= 0 {
		workers = DefaultBridgeWorkers
	}
	return &bridge{h: h, max: int32(workers), jobs: make(chan *bridgeJob, 16*workers)}
}

type bridge struct {
	h       nethttp.Handler
	max     int32
	running atomic.Int32
	jobs    chan *bridgeJob
}

type bridgeJob struct {
	req    *nethttp.Request
	w      *ResponseWriter
	cancel context.CancelFunc
	log    *slog.Logger
}

func (b *bridge) serve(w *ResponseWriter, r *Request) {
	req, cancel, err := netRequest(r)
	if err != nil {
		Error(w, 400)
		return
	}
	j := &bridgeJob{req: req, w: w, cancel: cancel, log: r.cs.s.logger()}
	w.onClose = cancel
	w.Async()
	select {
	case b.jobs <- j:
		b.spawn()
	default:
		cancel()
		w.Header().Set("Retry-After", "1")
		Error(w, 503)
		w.End()
	}
}

// spawn starts a worker unless max are running.
func (b *bridge) spawn() bool {
	for {
		n := b.running.Load()
		if n >= b.max {
			return false
		}
		if b.running.CompareAndSwap(n, n+1) {
			go b.work()
			return true
		}
	}
}

func (b *bridge) work() {
	for {
		select {
		case j := <-b.jobs:
			b.run(j)
			continue
		default:
		}
		b.running.Add(-1)
		// A job queued after the check above, while all workers looked
		// busy, must not be stranded.
		if len(b.jobs) == 0 {
			return
		}
		for {
			n := b.running.Load()
			if n >= b.max {
				return
			}
			if b.running.CompareAndSwap(n, n+1) {
				break
			}
		}
	}
}

func (b *bridge) run(j *bridgeJob) {
	bw := &bridgeWriter{w: j.w, h: make(nethttp.Header)}
	defer func() {
		v := recover()
		j.cancel()
		if v != nil {
			if v != nethttp.ErrAbortHandler {
				j.log.Error("http: bridged handler panicked", "panic", v)
			}
			if bw.wrote {
				j.w.cs.abortFromAnywhere()
				j.w.End()
				return
			}
			j.w.resetForError(500)
		} else if !bw.wrote {
			bw.WriteHeader(200)
		}
		j.w.End()
	}()
	b.h.ServeHTTP(bw, j.req)
}

// netRequest copies r into a net/http server request.
func netRequest(r *Request) (*nethttp.Request, context.CancelFunc, error) {
	target := string(r.Target())
	method := string(r.Method())
	var u *url.URL
	var err error
	if method == "CONNECT" && !strings.HasPrefix(target, "/") {
		u, err = url.ParseRequestURI("http://" + target)
		if err == nil {
			u.Scheme = ""
		}
	} else {
		u, err = url.ParseRequestURI(target)
	}
	if err != nil {
		return nil, nil, err
	}
	hdr := make(nethttp.Header, r.NumHeaders())
	for name, value := range r.Headers() {
		hdr.Add(string(name), string(value))
	}
	host := string(r.Host())
	if u.Host != "" {
		host = u.Host
	}
	delete(hdr, "Host")
	var body io.ReadCloser = nethttp.NoBody
	if b := r.Body(); len(b) > 0 {
		body = io.NopCloser(bytes.NewReader(bytes.Clone(b)))
	}
	remote := ""
	if a := r.RemoteAddr(); a != nil {
		remote = a.String()
	}
	ctx := context.Background()
	if hc := r.Conn(); hc != nil {
		// As net/http's server: the address the connection came in on.
		ctx = context.WithValue(ctx, nethttp.LocalAddrContextKey, hc.LocalAddr())
	}
	ctx, cancel := context.WithCancel(ctx)
	req := &nethttp.Request{
		Method:        method,
		URL:           u,
		Proto:         string(r.Proto()),
		ProtoMajor:    r.ProtoMajor(),
		ProtoMinor:    r.ProtoMinor(),
		Header:        hdr,
		Body:          body,
		ContentLength: int64(len(r.Body())),
		Close:         r.Close(),
		Host:          host,
		RemoteAddr:    remote,
		RequestURI:    target,
		TLS:           r.TLS(),
	}
	if r.Chunked() {
		req.ContentLength = -1
		req.TransferEncoding = []string{"chunked"}
	}
	return req.WithContext(ctx), cancel, nil
}

// bridgeWriter is the net/http ResponseWriter of a bridged request.
type bridgeWriter struct {
	w     *ResponseWriter
	h     nethttp.Header
	wrote bool
}

var _ nethttp.Flusher = (*bridgeWriter)(nil)

func (b *bridgeWriter) Header() nethttp.Header { return b.h }

func (b *bridgeWriter) WriteHeader(code int) {
	if b.wrote || (code >= 100 && code < 200) {
		return
	}
	b.wrote = true
	h := b.w.Header()
	for k, vs := range b.h {
		for _, v := range vs {
			h.Add(k, v)
		}
	}
	b.w.WriteHeader(code)
}

func (b *bridgeWriter) Write(p []byte) (int, error) {
	if !b.wrote {
		if _, ok := b.h["Content-Type"]; !ok && len(p) > 0 && b.h.Get("Transfer-Encoding") == "" {
			b.h.Set("Content-Type", nethttp.DetectContentType(p))
		}
		b.WriteHeader(200)
	}
	n, err := b.w.Write(p)
	switch {
	case errors.Is(err, ErrBodyNotAllowed):
		return n, nethttp.ErrBodyNotAllowed
	case errors.Is(err, ErrContentLength):
		return n, nethttp.ErrContentLength
	}
	return n, err
}

func (b *bridgeWriter) Flush() {
	if !b.wrote {
		b.WriteHeader(200)
	}
	b.w.Flush()
}

// abortFromAnywhere closes the connection at once, from any goroutine.
func (cs *conn) abortFromAnywhere() {
	cs.mu.Lock()
	cs.closed.Store(true)
	cs.mu.Unlock()
	cs.c.Abort()
}
