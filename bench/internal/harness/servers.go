package harness

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	nethttp "net/http"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/panjf2000/gnet/v2"
	"github.com/panjf2000/gnet/v2/pkg/logging"

	"github.com/seed358e4494/herd"
	"github.com/seed358e4494/herd/bench/internal/cfloor"
	herdhttp "github.com/seed358e4494/herd/protocol/http"
)

// Proto is what a server speaks.
type Proto int

const (
	Echo Proto = iota // raw TCP echo
	HTTP              // HTTP/1.1 hello world
)

// Spec names one server under test.
type Spec struct {
	Impl  string // herd, gnet, cfloor, stdnet, nethttp
	Mode  string // herd: reuseport, shared, leastconns, roundrobin; gnet: reuseport, noreuse; cfloor: reuseport
	Count int    // event loops (herd, gnet, cfloor)
}

// Name is the spec as it appears in benchmark names: herd-reuseport-2,
// gnet-noreuse-4, cfloor-reuseport-2, stdnet, nethttp.
func (s Spec) Name() string {
	if s.Impl == "stdnet" || s.Impl == "nethttp" {
		return s.Impl
	}
	return fmt.Sprintf("%s-%s-%d", s.Impl, s.Mode, s.Count)
}

// LoopCount is one event loop's counters: connections accepted and units of
// work (reads handed to the handler).
type LoopCount struct {
	Accepted uint64
	Work     uint64
}

// Server is a running server under test.
type Server interface {
	Addr() string
	// Loops is per-loop counters since start, nil where the server has no
	// loops (stdnet, nethttp).
	Loops() []LoopCount
	// Active is the number of open connections.
	Active() int
	Stop()
}

// HelloBody is the body every HTTP server answers.
var HelloBody = []byte("Hello, World!")

// Start starts the server s speaking p on a loopback port.
func Start(s Spec, p Proto) (Server, error) {
	switch s.Impl {
	case "herd":
		return startHerd(s, p)
	case "gnet":
		return startGnet(s, p)
	case "cfloor":
		return startCfloor(s, p)
	case "stdnet":
		if p != Echo {
			return nil, errors.New("stdnet serves echo only")
		}
		return startStdNet()
	case "nethttp":
		if p != HTTP {
			return nil, errors.New("nethttp serves HTTP only")
		}
		return startNetHTTP()
	}
	return nil, fmt.Errorf("unknown server %q", s.Impl)
}

// ---- herd

type herdServer struct {
	w    *herd.Worker
	stop context.CancelFunc
	done chan error
}

func startHerd(s Spec, p Proto) (Server, error) {
	w := &herd.Worker{
		Addr:        "tcp://127.0.0.1:0",
		Count:       s.Count,
		StopTimeout: time.Second,
		Logger:      slog.New(slog.DiscardHandler),
	}
	switch s.Mode {
	case "reuseport":
		w.ReusePort = true
	case "shared":
		w.Accept = herd.AcceptShared
	case "leastconns":
		w.Accept = herd.AcceptLeastConns
	case "roundrobin":
		w.Accept = herd.AcceptRoundRobin
	default:
		return nil, fmt.Errorf("unknown herd mode %q", s.Mode)
	}
	switch p {
	case Echo:
		w.OnMessage = func(c *herd.Conn, msg []byte) { c.Send(msg) }
	case HTTP:
		srv := &herdhttp.Server{Handler: func(w *herdhttp.ResponseWriter, r *herdhttp.Request) {
			w.Header().Set("Content-Type", "text/plain")
			w.Write(HelloBody)
		}}
		if err := srv.Attach(w); err != nil {
			return nil, err
		}
	}
	if err := w.Listen(); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	hs := &herdServer{w: w, stop: cancel, done: make(chan error, 1)}
	go func() { hs.done <- w.Run(ctx) }()
	return hs, nil
}

func (h *herdServer) Addr() string { return h.w.ListenAddr().String() }

func (h *herdServer) Loops() []LoopCount {
	st := h.w.Stats()
	out := make([]LoopCount, len(st.Loops))
	for i, l := range st.Loops {
		out[i] = LoopCount{Accepted: l.Accepted, Work: l.MessagesIn}
	}
	return out
}

func (h *herdServer) Active() int {
	n := 0
	for _, l := range h.w.Stats().Loops {
		n += int(l.Active)
	}
	return n
}

func (h *herdServer) Stop() {
	h.stop()
	select {
	case <-h.done:
	case <-time.After(5 * time.Second):
	}
}

// ---- gnet

// gnetLoop is one gnet event loop's counters and scratch space. Only that
// loop writes them; the counters are atomic so Loops can read them.
type gnetLoop struct {
	accepted, work atomic.Uint64
	out            []byte // response batch, reused (loop-owned)
	dateSec        int64
	date           []byte
	_              [64]byte
}

type gnetServer struct {
	gnet.BuiltinEventEngine
	proto  Proto
	addr   string
	eng    gnet.Engine
	booted chan struct{}
	done   chan error

	mu     sync.Mutex
	byLoop map[gnet.EventLoop]*gnetLoop
	loops  []*gnetLoop
	active atomic.Int64
}

// freePort finds a free loopback port. gnet with SO_REUSEPORT binds each
// loop's listener to the address given, so port 0 would give each loop a
// port of its own.
func freePort() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr, nil
}

func startGnet(s Spec, p Proto) (Server, error) {
	var reuse bool
	switch s.Mode {
	case "reuseport":
		reuse = true
	case "noreuse":
	default:
		return nil, fmt.Errorf("unknown gnet mode %q", s.Mode)
	}
	var lastErr error
	for try := 0; try < 3; try++ {
		addr, err := freePort()
		if err != nil {
			return nil, err
		}
		g := &gnetServer{proto: p, addr: addr, booted: make(chan struct{}), done: make(chan error, 1), byLoop: map[gnet.EventLoop]*gnetLoop{}}
		go func() {
			g.done <- gnet.Run(g, "tcp://"+addr,
				gnet.WithMulticore(true),
				gnet.WithNumEventLoop(s.Count),
				gnet.WithReusePort(reuse),
				gnet.WithLogger(quietLogger{}),
			)
		}()
		select {
		case <-g.booted:
			return g, nil
		case err := <-g.done:
			lastErr = err
		case <-time.After(5 * time.Second):
			return nil, errors.New("gnet did not boot")
		}
	}
	return nil, lastErr
}

// quietLogger keeps gnet's start-up notices out of benchmark output;
// errors still go to stderr.
type quietLogger struct{}

func (quietLogger) Debugf(string, ...any) {}
func (quietLogger) Infof(string, ...any)  {}
func (quietLogger) Warnf(string, ...any)  {}
func (quietLogger) Errorf(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "gnet: "+format+"\n", a...)
}
func (quietLogger) Fatalf(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "gnet: "+format+"\n", a...)
}

func init() {
	// gnet logs "Launching gnet ..." through its package-level logger.
	logging.SetDefaultLoggerAndFlusher(quietLogger{}, nil)
}

func (g *gnetServer) OnBoot(eng gnet.Engine) gnet.Action {
	g.eng = eng
	close(g.booted)
	return gnet.None
}

func (g *gnetServer) OnOpen(c gnet.Conn) ([]byte, gnet.Action) {
	el := c.EventLoop()
	g.mu.Lock()
	l := g.byLoop[el]
	if l == nil {
		l = &gnetLoop{}
		g.byLoop[el] = l
		g.loops = append(g.loops, l)
	}
	g.mu.Unlock()
	l.accepted.Add(1)
	g.active.Add(1)
	c.SetContext(l)
	return nil, gnet.None
}

func (g *gnetServer) OnClose(c gnet.Conn, err error) gnet.Action {
	g.active.Add(-1)
	return gnet.None
}

var (
	crlfcrlf  = []byte("\r\n\r\n")
	connClose = []byte("connection: close")
)

func (g *gnetServer) OnTraffic(c gnet.Conn) gnet.Action {
	l := c.Context().(*gnetLoop)
	l.work.Add(1)
	if g.proto == Echo {
		buf, _ := c.Next(-1)
		c.Write(buf)
		return gnet.None
	}
	// A minimal HTTP/1.1 reader: find the end of each request head, answer
	// hello; "Connection: close" closes after the answer. GET only, no body.
	buf, _ := c.Peek(-1)
	out := l.out[:0]
	consumed := 0
	closing := false
	for !closing {
		i := bytes.Index(buf[consumed:], crlfcrlf)
		if i < 0 {
			break
		}
		head := buf[consumed : consumed+i]
		consumed += i + 4
		closing = containsFold(head, connClose)
		out = l.appendHello(out, closing)
	}
	c.Discard(consumed)
	l.out = out
	if len(out) > 0 {
		c.Write(out)
	}
	if closing {
		return gnet.Close
	}
	return gnet.None
}

func (l *gnetLoop) appendHello(b []byte, closing bool) []byte {
	now := time.Now()
	if s := now.Unix(); s != l.dateSec {
		l.dateSec = s
		l.date = now.UTC().AppendFormat(l.date[:0], nethttp.TimeFormat)
	}
	b = append(b, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nDate: "...)
	b = append(b, l.date...)
	b = append(b, "\r\nContent-Length: "...)
	b = strconv.AppendInt(b, int64(len(HelloBody)), 10)
	if closing {
		b = append(b, "\r\nConnection: close"...)
	}
	b = append(b, "\r\n\r\n"...)
	return append(b, HelloBody...)
}

// containsFold reports whether s contains the lower-case ASCII pattern p,
// ignoring case.
func containsFold(s, p []byte) bool {
	for i := 0; i+len(p) <= len(s); i++ {
		j := 0
		for ; j < len(p); j++ {
			if s[i+j]|0x20 != p[j] && s[i+j] != p[j] {
				break
			}
		}
		if j == len(p) {
			return true
		}
	}
	return false
}

func (g *gnetServer) Addr() string { return g.addr }

func (g *gnetServer) Loops() []LoopCount {
	g.mu.Lock()
	defer g.mu.Unlock()
	out := make([]LoopCount, len(g.loops))
	for i, l := range g.loops {
		out[i] = LoopCount{Accepted: l.accepted.Load(), Work: l.work.Load()}
	}
	return out
}

func (g *gnetServer) Active() int { return int(g.active.Load()) }

func (g *gnetServer) Stop() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	g.eng.Stop(ctx)
	select {
	case <-g.done:
	case <-ctx.Done():
	}
}

// ---- cfloor: the floor, a minimal epoll server in C

// cfloorServer adapts cfloor.Server to Server.
type cfloorServer struct{ *cfloor.Server }

func startCfloor(s Spec, p Proto) (Server, error) {
	if s.Mode != "reuseport" {
		return nil, fmt.Errorf("unknown cfloor mode %q", s.Mode)
	}
	c, err := cfloor.Start(s.Count, p == HTTP)
	if err != nil {
		return nil, err
	}
	return cfloorServer{c}, nil
}

func (c cfloorServer) Loops() []LoopCount {
	ls := c.Server.Loops()
	out := make([]LoopCount, len(ls))
	for i, l := range ls {
		out[i] = LoopCount{Accepted: l.Accepted, Work: l.Work}
	}
	return out
}

// ---- std net: a goroutine per connection

type stdServer struct {
	ln     net.Listener
	active atomic.Int64
	wg     sync.WaitGroup
	mu     sync.Mutex
	conns  map[net.Conn]struct{}
}

func startStdNet() (Server, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s := &stdServer{ln: ln, conns: map[net.Conn]struct{}{}}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.conns[c] = struct{}{}
			s.mu.Unlock()
			s.active.Add(1)
			s.wg.Add(1)
			go s.serve(c)
		}
	}()
	return s, nil
}

func (s *stdServer) serve(c net.Conn) {
	defer s.wg.Done()
	defer func() {
		c.Close()
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
		s.active.Add(-1)
	}()
	buf := make([]byte, 8<<10)
	for {
		n, err := c.Read(buf)
		if n > 0 {
			if _, werr := c.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			if err != io.EOF {
				return
			}
			return
		}
	}
}

func (s *stdServer) Addr() string       { return s.ln.Addr().String() }
func (s *stdServer) Loops() []LoopCount { return nil }
func (s *stdServer) Active() int        { return int(s.active.Load()) }
func (s *stdServer) Stop() {
	s.ln.Close()
	s.mu.Lock()
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// ---- net/http

type netHTTPServer struct {
	ln     net.Listener
	srv    *nethttp.Server
	active atomic.Int64
}

func startNetHTTP() (Server, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s := &netHTTPServer{ln: ln}
	s.srv = &nethttp.Server{
		Handler: nethttp.HandlerFunc(func(w nethttp.ResponseWriter, r *nethttp.Request) {
			w.Header().Set("Content-Type", "text/plain")
			w.Write(HelloBody)
		}),
		ConnState: func(c net.Conn, st nethttp.ConnState) {
			switch st {
			case nethttp.StateNew:
				s.active.Add(1)
			case nethttp.StateClosed, nethttp.StateHijacked:
				s.active.Add(-1)
			}
		},
		ErrorLog: nil,
	}
	go s.srv.Serve(ln)
	return s, nil
}

func (s *netHTTPServer) Addr() string       { return s.ln.Addr().String() }
func (s *netHTTPServer) Loops() []LoopCount { return nil }
func (s *netHTTPServer) Active() int        { return int(s.active.Load()) }
func (s *netHTTPServer) Stop() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if s.srv.Shutdown(ctx) != nil {
		s.srv.Close()
	}
}
