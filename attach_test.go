//go:build linux

package herd_test

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/seed358e4494/herd"
	"github.com/seed358e4494/herd/balancer"
	"github.com/seed358e4494/herd/internal/loopback"
	"github.com/seed358e4494/herd/protocol"
	herdhttp "github.com/seed358e4494/herd/protocol/http"
	"github.com/seed358e4494/herd/protocol/websocket"
)

// TestAttachConflicts: every Worker a server built on herd cannot serve,
// and every second server on one Worker, is an error naming the field or
// the first server, the same in each package (http.Server.Attach took a
// udp:// worker, a second server won silently, and balancer.Attach took a
// worker whose OnMessage would never run).
func TestAttachConflicts(t *testing.T) {
	backend := loopback.RefusedAddr(t)
	attachers := []struct {
		name   string
		attach func(w *herd.Worker) error
	}{
		{"http", func(w *herd.Worker) error { return (&herdhttp.Server{}).Attach(w) }},
		{"websocket", func(w *herd.Worker) error { return (&websocket.Server{}).Attach(w) }},
		{"balancer", func(w *herd.Worker) error {
			return (&balancer.Balancer{Backends: []balancer.Backend{{Addr: backend}}}).Attach(w)
		}},
	}
	onMessage := func(*herd.Conn, []byte) {}
	onPacket := func(*herd.Packet, []byte) {}
	conflicts := []struct {
		name   string
		worker func() *herd.Worker
		want   string // in the error
	}{
		{"udp", func() *herd.Worker { return &herd.Worker{Addr: "udp://127.0.0.1:0", OnPacket: onPacket} }, `Worker.Addr "udp://127.0.0.1:0" is udp://`},
		{"Protocol", func() *herd.Worker { return &herd.Worker{Addr: "tcp://127.0.0.1:0", Protocol: textProto{}} }, "Worker.Protocol"},
		{"protocol scheme", func() *herd.Worker { return &herd.Worker{Addr: "text://127.0.0.1:0"} }, "Worker.Protocol or Addr"},
		{"OnMessage", func() *herd.Worker { return &herd.Worker{Addr: "tcp://127.0.0.1:0", OnMessage: onMessage} }, "Worker.OnMessage is set"},
		{"OnPacket", func() *herd.Worker { return &herd.Worker{Addr: "tcp://127.0.0.1:0", OnPacket: onPacket} }, "Worker.OnPacket is set"},
		{"bad Addr", func() *herd.Worker { return &herd.Worker{Addr: "tcp://127.0.0.1:99999"} }, `herd: address "tcp://127.0.0.1:99999"`},
	}
	for _, a := range attachers {
		for _, c := range conflicts {
			t.Run(a.name+"/"+c.name, func(t *testing.T) {
				err := a.attach(c.worker())
				if err == nil || !strings.HasPrefix(err.Error(), a.name+": ") || !strings.Contains(err.Error(), c.want) {
					t.Fatalf("Attach: %v; want an error from %s naming %q", err, a.name, c.want)
				}
			})
		}
		for _, second := range attachers {
			t.Run(a.name+"/then "+second.name, func(t *testing.T) {
				w := &herd.Worker{Addr: "tcp://127.0.0.1:0"}
				if err := a.attach(w); err != nil {
					t.Fatal(err)
				}
				err := second.attach(w)
				if err == nil || !strings.HasPrefix(err.Error(), second.name+": ") || !strings.Contains(err.Error(), "already served by") {
					t.Fatalf("a second Attach: %v; want it refused, naming the first", err)
				}
			})
		}
		t.Run(a.name+"/running", func(t *testing.T) {
			w := &herd.Worker{Addr: "tcp://127.0.0.1:0", Count: 1, OnConnect: func(c *herd.Conn) { c.Close() }}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- w.Run(ctx) }()
			defer func() { cancel(); <-done }()
			for w.Loops() == nil {
				time.Sleep(time.Millisecond)
			}
			if err := a.attach(w); err == nil || !strings.Contains(err.Error(), "attach before Run") {
				t.Fatalf("Attach to a running worker: %v", err)
			}
		})
	}
}

// TestValidWorkerShape: Run refuses, naming the field, callbacks that
// cannot run for the worker's network (a udp:// worker with no OnPacket
// ran and discarded every datagram; OnPacket on a TCP worker and
// OnMessage on a UDP one were ignored). An address without a scheme is
// tcp://, as Addr's doc says.
func TestValidWorkerShape(t *testing.T) {
	onPacket := func(*herd.Packet, []byte) {}
	for _, tc := range []struct {
		w    *herd.Worker
		want string
	}{
		{&herd.Worker{Addr: "udp://127.0.0.1:0"}, "needs Worker.OnPacket"},
		{&herd.Worker{Addr: "tcp://127.0.0.1:0", OnPacket: onPacket}, "Worker.OnPacket is set"},
		{&herd.Worker{Addr: "unix:///tmp/herd-shape.sock", OnPacket: onPacket}, "Worker.OnPacket is set"},
		{&herd.Worker{Addr: "udp://127.0.0.1:0", OnPacket: onPacket, OnConnect: func(*herd.Conn) {}}, "Worker.OnConnect is set"},
		{&herd.Worker{Addr: "udp://127.0.0.1:0", OnPacket: onPacket, OnMessage: func(*herd.Conn, []byte) {}}, "Worker.OnMessage is set"},
		{&herd.Worker{Addr: "udp://127.0.0.1:0", OnPacket: onPacket, OnClose: func(*herd.Conn) {}}, "Worker.OnClose is set"},
		{&herd.Worker{Addr: "udp://127.0.0.1:0", OnPacket: onPacket, OnError: func(*herd.Conn, error) {}}, "Worker.OnError is set"},
		{&herd.Worker{Addr: "udp://127.0.0.1:0", OnPacket: onPacket, OnBufferFull: func(*herd.Conn) {}}, "Worker.OnBufferFull is set"},
		{&herd.Worker{Addr: "udp://127.0.0.1:0", OnPacket: onPacket, OnBufferDrain: func(*herd.Conn) {}}, "Worker.OnBufferDrain is set"},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := tc.w.Run(ctx)
		cancel()
		if err == nil || !strings.HasPrefix(err.Error(), "herd: ") || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Run(%q): %v; want an error naming %q", tc.w.Addr, err, tc.want)
		}
	}
	w := &herd.Worker{Addr: "127.0.0.1:0", Count: 1}
	if err := w.Listen(); err != nil {
		t.Fatalf("Listen(%q): %v", w.Addr, err)
	}
	if a := w.ListenAddr(); a.Network() != "tcp" {
		t.Fatalf("%q listens on %s %s; want tcp", w.Addr, a.Network(), a)
	}
	w.Shutdown(context.Background())
}

// textProto is a Protocol set in Worker.Protocol.
type textProto = protocol.Text

// TestClaimCheckedAtListen: a field a server's Attach would have refused,
// set after it, is refused at Listen, naming it and the server.
func TestClaimCheckedAtListen(t *testing.T) {
	for name, set := range map[string]func(w *herd.Worker){
		"OnMessage": func(w *herd.Worker) { w.OnMessage = func(*herd.Conn, []byte) {} },
		"Protocol":  func(w *herd.Worker) { w.Protocol = protocol.Text{} },
	} {
		w := &herd.Worker{Addr: "tcp://127.0.0.1:0", Logger: slog.New(slog.DiscardHandler)}
		if err := w.Claim("the test server"); err != nil {
			t.Fatal(err)
		}
		set(w)
		err := w.Listen()
		if err == nil {
			w.Shutdown(context.Background())
			t.Errorf("%s set after Attach: Listen succeeded", name)
			continue
		}
		if !strings.Contains(err.Error(), name) || !strings.Contains(err.Error(), "the test server") {
			t.Errorf("%s set after Attach: %v, want it and the server named", name, err)
		}
	}
}
