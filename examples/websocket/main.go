//go:build linux || darwin || freebsd

// Command websocket is a WebSocket server on herd: an echo endpoint and a
// chat room whose page the same worker serves.
//
//	GET /        the chat page
//	GET /echo    WebSocket: every message comes back (permessage-deflate offered)
//	GET /chat    WebSocket: every message goes to everyone in the room
//
// Run it and open http://127.0.0.1:8081/ in two browser tabs:
//
//	go run ./examples/websocket -addr tcp://127.0.0.1:8081
//
// The first line of output is the bound address (port 0 picks a free one)
// and the process ID. SIGINT or SIGTERM stops it gracefully: each peer gets
// a close frame 1001 (Going Away). SIGHUP upgrades it (see upgrade.Process):
// the executable starts again and takes over the listening socket, and the
// connections of this process get 1001 after -upgrade-grace.
package main

import (
	"context"
	_ "embed"
	"flag"
	"fmt"
	"io"
	"log/slog"
	nethttp "net/http"
	"os"
	"time"

	"github.com/seed358e4494/herd"
	"github.com/seed358e4494/herd/gateway"
	"github.com/seed358e4494/herd/internal/selfsigned"
	"github.com/seed358e4494/herd/protocol/http"
	"github.com/seed358e4494/herd/protocol/websocket"
	"github.com/seed358e4494/herd/upgrade"
)

//go:embed chat.html
var chatPage []byte

func main() {
	if err := run(context.Background(), os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "websocket:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("websocket", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", "tcp://127.0.0.1:8081", "listen address")
	count := fs.Int("count", 0, "event loops; 0 means one per CPU")
	ping := fs.Duration("ping", 30*time.Second, "server ping interval (a peer silent for two intervals is closed)")
	useTLS := fs.Bool("tls", false, "serve TLS (https, wss); without -cert and -key, with a self-signed certificate made at start")
	certFile := fs.String("cert", "", "TLS certificate (PEM); implies -tls")
	keyFile := fs.String("key", "", "TLS key (PEM)")
	grace := fs.Duration("upgrade-grace", 5*time.Second, "after an upgrade, how long this process serves its connections before it sends them 1001")
	if err := fs.Parse(args); err != nil {
		return err
	}
	logger := slog.New(slog.NewTextHandler(stderr, nil))

	echo := &websocket.Server{
		Compression:  true,
		PingInterval: *ping,
		OnMessage: func(c *websocket.Conn, op websocket.OpCode, data []byte) {
			c.WriteMessage(op, data)
		},
	}
	// The room is a gateway group: each loop keeps its own members, and a
	// message is encoded once and written by every loop to its share.
	// (examples/chat does the same across processes.)
	g := &gateway.Gateway{Logger: logger}
	chatServer := &websocket.Server{
		PingInterval: *ping,
		OnOpen: func(c *websocket.Conn, r *herdhttp.Request) {
			id := g.Add(gateway.WebSocket(c))
			c.SetContext(id)
			g.JoinGroup(id, "chat")
		},
		OnMessage: func(c *websocket.Conn, op websocket.OpCode, data []byte) { g.SendToGroup("chat", data) },
		OnClose: func(c *websocket.Conn, code websocket.StatusCode, reason string) {
			if id, ok := c.Context().(gateway.ClientID); ok {
				g.Remove(id)
			}
		},
	}

	srv := &herdhttp.Server{Handler: func(w *herdhttp.ResponseWriter, r *herdhttp.Request) {
		switch string(r.Path()) {
		case "/":
			w.Header().Set("Content-Type", "text/html; charset=utf-8")
			w.Write(chatPage)
		case "/echo":
			echo.Upgrade(w, r)
		case "/chat":
			chatServer.Upgrade(w, r)
		default:
			herdhttp.Error(w, nethttp.StatusNotFound)
		}
	}}

	// A few long-lived connections: least-conns spreads them over the
	// loops, which a reuseport hash does not promise.
	w := &herd.Worker{Name: "websocket", Addr: *addr, Count: *count, Accept: herd.AcceptLeastConns, Logger: logger}
	scheme, fingerprint, err := selfsigned.Setup(w, *useTLS, *certFile, *keyFile)
	if err != nil {
		return err
	}
	if err := srv.Attach(w); err != nil {
		return err
	}
	if err := g.Attach(w); err != nil {
		return err
	}
	p := &upgrade.Process{Workers: []*herd.Worker{w}, UpgradeGrace: *grace}
	if err := p.Listen(); err != nil { // takes the sockets of an upgrade's old process
		return err
	}
	fmt.Fprintf(stdout, "websocket: listening on %s://%s pid %d\n", scheme, w.ListenAddr(), os.Getpid())
	if fingerprint != "" {
		fmt.Fprintf(stdout, "websocket: self-signed certificate, SHA-256 fingerprint %s (wss://)\n", fingerprint)
	}
	return p.Run(ctx)
}
