//go:build linux || darwin || freebsd

// Command chat is a WebSocket chat on herd's gateway: rooms are groups,
// private messages go to a uid (the user's name), and several processes
// share one Redis so that users connected to different processes talk to
// each other. Put a balancer in front (haproxy.cfg here) and each browser
// tab lands on one process or another; the page shows which.
//
//	redis-server --port 6379 --save ''
//	go run . -addr tcp://127.0.0.1:8001 -redis 127.0.0.1:6379 -node one
//	go run . -addr tcp://127.0.0.1:8002 -redis 127.0.0.1:6379 -node two
//	haproxy -f haproxy.cfg
//
// then open http://127.0.0.1:8000/ in two tabs (README.md says more).
// Without -redis it runs alone, with the gateway in memory.
package main

import (
	"context"
	_ "embed"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	nethttp "net/http"
	"os"
	"strings"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/seed358e4494/herd"
	"github.com/seed358e4494/herd/gateway"
	"github.com/seed358e4494/herd/protocol/http"
	"github.com/seed358e4494/herd/protocol/websocket"
	herdredis "github.com/seed358e4494/herd/redis"
)

//go:embed chat.html
var page []byte

func main() {
	if err := run(context.Background(), os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "chat:", err)
		os.Exit(1)
	}
}

// event is what travels over the WebSocket, both ways, as JSON.
type event struct {
	Type string `json:"type"` // join, say, private (from the page); welcome, joined, left, said, private, error (to it)
	Room string `json:"room,omitempty"`
	Name string `json:"name,omitempty"` // the user's name, which is its uid
	To   string `json:"to,omitempty"`
	Text string `json:"text,omitempty"`
	Node string `json:"node,omitempty"` // the process that served the sender
	ID   string `json:"id,omitempty"`   // the client ID (welcome): node, incarnation, connection; never issued twice
}

func encode(e event) []byte {
	b, _ := json.Marshal(e)
	return b
}

// user is one tab's state, kept with its connection.
type user struct {
	id   gateway.ClientID
	name string
	room string
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("chat", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", "tcp://127.0.0.1:8001", "listen address")
	redisAddr := fs.String("redis", "", "Redis address shared by the chat processes; empty: this process alone")
	node := fs.String("node", "", "this process's name in the cluster (shown on the page); empty: generated")
	count := fs.Int("count", 0, "event loops; 0 means one per CPU")
	if err := fs.Parse(args); err != nil {
		return err
	}
	logger := slog.New(slog.NewTextHandler(stderr, nil))
	g := &gateway.Gateway{Node: *node, Logger: logger, OnGap: func(from string, missed uint64) {
		logger.Warn("chat: messages from another node were lost", "from", from, "missed", missed)
	}}
	if *redisAddr != "" {
		rdb := goredis.NewClient(&goredis.Options{Addr: *redisAddr, DialTimeout: time.Second})
		defer rdb.Close()
		g.Broker = &herdredis.Broker{Client: rdb}
		// The TTL bounds what a killed process's clients leave behind.
		g.Sessions = &herdredis.Sessions{Client: rdb, TTL: 24 * time.Hour}
	}

	ws := &websocket.Server{PingInterval: 30 * time.Second}
	ws.OnOpen = func(c *websocket.Conn, _ *herdhttp.Request) {
		u := &user{id: g.Add(gateway.WebSocket(c))}
		c.SetContext(u)
		c.WriteText(encode(event{Type: "welcome", Node: g.NodeName(), ID: string(u.id)}))
	}
	ws.OnMessage = func(c *websocket.Conn, _ websocket.OpCode, data []byte) {
		u := c.Context().(*user)
		var e event
		if json.Unmarshal(data, &e) != nil {
			c.WriteText(encode(event{Type: "error", Text: "not JSON"}))
			return
		}
		e.Room, e.Name, e.To = clean(e.Room), clean(e.Name), clean(e.To)
		switch e.Type {
		case "join":
			if e.Room == "" || e.Name == "" {
				c.WriteText(encode(event{Type: "error", Text: "join needs a room and a name"}))
				return
			}
			if u.room != "" {
				g.LeaveGroup(u.id, u.room)
				g.SendToGroup(u.room, encode(event{Type: "left", Room: u.room, Name: u.name}))
			}
			if u.name != "" && u.name != e.Name {
				g.UnbindUid(u.id, u.name)
			}
			u.name, u.room = e.Name, e.Room
			g.BindUid(u.id, u.name)
			g.JoinGroup(u.id, u.room)
			g.SendToGroup(u.room, encode(event{Type: "joined", Room: u.room, Name: u.name, Node: g.NodeName()}))
		case "say":
			if u.room == "" {
				c.WriteText(encode(event{Type: "error", Text: "join a room first"}))
				return
			}
			g.SendToGroup(u.room, encode(event{Type: "said", Room: u.room, Name: u.name, Text: e.Text, Node: g.NodeName()}))
		case "private":
			if u.name == "" || e.To == "" {
				c.WriteText(encode(event{Type: "error", Text: "private needs your name and a recipient"}))
				return
			}
			msg := encode(event{Type: "private", Name: u.name, To: e.To, Text: e.Text, Node: g.NodeName()})
			g.SendToUid(e.To, msg)
			if e.To != u.name {
				g.SendToUid(u.name, msg) // the sender's other tabs see it too
			}
		default:
			c.WriteText(encode(event{Type: "error", Text: "unknown type " + e.Type}))
		}
	}
	ws.OnClose = func(c *websocket.Conn, _ websocket.StatusCode, _ string) {
		u, ok := c.Context().(*user)
		if !ok {
			return
		}
		if u.room != "" {
			g.SendToGroup(u.room, encode(event{Type: "left", Room: u.room, Name: u.name}), u.id)
		}
		g.Remove(u.id)
	}

	srv := &herdhttp.Server{Handler: func(w *herdhttp.ResponseWriter, r *herdhttp.Request) {
		switch string(r.Path()) {
		case "/":
			w.Header().Set("Content-Type", "text/html; charset=utf-8")
			w.Write(page)
		case "/ws":
			ws.Upgrade(w, r)
		case "/health":
			w.WriteString("ok " + g.NodeName())
		default:
			herdhttp.Error(w, nethttp.StatusNotFound)
		}
	}}
	w := &herd.Worker{Name: "chat", Addr: *addr, Count: *count, Accept: herd.AcceptLeastConns, Logger: logger}
	if err := srv.Attach(w); err != nil {
		return err
	}
	if err := g.Attach(w); err != nil {
		return err
	}
	defer g.Close()
	if err := w.Listen(); err != nil {
		return err
	}
	go func() {
		<-g.Ready()
		fmt.Fprintf(stdout, "chat: node %s listening on http://%s pid %d\n", g.NodeName(), w.ListenAddr(), os.Getpid())
	}()
	return herd.RunAll(ctx, w)
}

// clean bounds a name and keeps it to one line.
func clean(s string) string {
	s = strings.TrimSpace(strings.ReplaceAll(s, "\n", " "))
	if len(s) > 64 {
		s = s[:64]
	}
	return s
}
