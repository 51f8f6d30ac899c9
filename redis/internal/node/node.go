//go:build linux || darwin || freebsd

// Package node is a gateway node for the redis module's tests and the
// bench module (through command internal/cmd/node, or the tests' own
// binary run again): a text:// worker (one command or message per line)
// whose connections are gateway clients, joined to other nodes through
// Redis.
//
//	node -addr tcp://127.0.0.1:0 -redis 127.0.0.1:6379 -node a [-count N] [-uid-broadcast] [-cluster]
//
// With -cluster, -redis lists the cluster's masters, comma-separated.
//
// It prints "node <name> listening on <host:port> pid <pid> incarnation
// <incarnation>". Each line a client sends is a command; what the gateway
// delivers to the client arrives as a line too. Commands:
//
//	bind U | unbind U | join G | leave G | ungroup G | close ID
//	touid U TEXT | togroup G TEXT | togroupx G TEXT (not to the sender) | toall TEXT | toclient ID TEXT
//	id | online U | alive ID | count G | set K V | get | session ID | stats
//
// The queries answer with a line that starts with the command's name.
package node

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/seed358e4494/herd"
	"github.com/seed358e4494/herd/gateway"
	"github.com/seed358e4494/herd/protocol"
	herdredis "github.com/seed358e4494/herd/redis"
)

// Main runs a node with the command line args (without the program's
// name) until SIGTERM or SIGINT, and returns the process's exit code.
func Main(args []string) int {
	fs := flag.NewFlagSet("node", flag.ContinueOnError)
	addr := fs.String("addr", "tcp://127.0.0.1:0", "listen address")
	redisAddr := fs.String("redis", "", "Redis address; empty: this process alone")
	name := fs.String("node", "", "node name")
	count := fs.Int("count", 0, "event loops")
	uidBroadcast := fs.Bool("uid-broadcast", false, "publish SendToUid to every node (no presence lookup)")
	cluster := fs.Bool("cluster", false, "-redis lists the masters of a Redis Cluster")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if err := run(*addr, *redisAddr, *name, *count, *uidBroadcast, *cluster); err != nil {
		fmt.Fprintln(os.Stderr, "node:", err)
		return 1
	}
	return 0
}

func run(addr, redisAddr, name string, count int, uidBroadcast, cluster bool) error {
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	g := &gateway.Gateway{Node: name, Logger: logger, UidBroadcast: uidBroadcast}
	if redisAddr != "" {
		var rdb goredis.UniversalClient = goredis.NewClient(&goredis.Options{Addr: redisAddr, MaxRetries: -1, DialTimeout: time.Second})
		if cluster {
			rdb = goredis.NewClusterClient(&goredis.ClusterOptions{Addrs: strings.Split(redisAddr, ","), DialTimeout: time.Second})
		}
		defer rdb.Close()
		g.Broker = &herdredis.Broker{Client: rdb}
		g.Sessions = &herdredis.Sessions{Client: rdb}
	}
	w := &herd.Worker{Name: "node", Addr: addr, Protocol: protocol.Text{}, Count: count, Logger: logger}
	w.OnConnect = func(c *herd.Conn) { c.SetContext(g.Add(gateway.Raw(c, protocol.Text{}))) }
	w.OnClose = func(c *herd.Conn) { g.Remove(c.Context().(gateway.ClientID)) }
	w.OnMessage = func(c *herd.Conn, msg []byte) { command(g, c, c.Context().(gateway.ClientID), string(msg)) }
	if err := g.Attach(w); err != nil {
		return err
	}
	if err := w.Listen(); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	<-g.Ready()
	fmt.Printf("node %s listening on %s pid %d incarnation %s\n", g.NodeName(), w.ListenAddr(), os.Getpid(), g.Incarnation())
	err := <-done
	g.Close()
	return err
}

func command(g *gateway.Gateway, c *herd.Conn, self gateway.ClientID, line string) {
	cmd, rest, _ := strings.Cut(line, " ")
	arg, text, _ := strings.Cut(rest, " ")
	reply := func(format string, a ...any) { c.Send([]byte(fmt.Sprintf(format, a...))) }
	// Queries may wait for Redis: never on the loop.
	query := func(f func(ctx context.Context)) {
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			f(ctx)
		}()
	}
	switch cmd {
	case "bind":
		g.BindUid(self, arg)
	case "unbind":
		g.UnbindUid(self, arg)
	case "join":
		g.JoinGroup(self, arg)
	case "leave":
		g.LeaveGroup(self, arg)
	case "ungroup":
		g.Ungroup(arg)
	case "close":
		g.CloseClient(gateway.ClientID(arg))
	case "touid":
		g.SendToUid(arg, []byte(text))
	case "togroup":
		g.SendToGroup(arg, []byte(text))
	case "togroupx":
		g.SendToGroup(arg, []byte(text), self)
	case "toall":
		g.SendToAll([]byte(rest))
	case "toclient":
		g.SendToClient(gateway.ClientID(arg), []byte(text))
	case "id":
		reply("id %s", self)
	case "online":
		query(func(ctx context.Context) {
			on, err := g.IsUidOnline(ctx, arg)
			reply("online %s %v %v", arg, on, err)
		})
	case "alive":
		query(func(ctx context.Context) {
			on, err := g.IsOnline(ctx, gateway.ClientID(arg))
			reply("alive %s %v %v", arg, on, err)
		})
	case "count":
		query(func(ctx context.Context) {
			n, err := g.GroupCount(ctx, arg)
			reply("count %s %d %v", arg, n, err)
		})
	case "set":
		query(func(ctx context.Context) {
			err := g.UpdateSession(ctx, self, map[string]string{arg: text})
			reply("set %v", err)
		})
	case "get":
		query(func(ctx context.Context) {
			s, err := g.Session(ctx, self)
			var kv []string
			for k, v := range s {
				kv = append(kv, k+"="+v)
			}
			sort.Strings(kv)
			reply("get %s %v", strings.Join(kv, ","), err)
		})
	case "session":
		query(func(ctx context.Context) {
			s, err := g.Session(ctx, gateway.ClientID(arg))
			var kv []string
			for k, v := range s {
				kv = append(kv, k+"="+v)
			}
			sort.Strings(kv)
			reply("session %s %s %v", arg, strings.Join(kv, ","), err)
		})
	case "stats":
		s := g.Stats()
		reply("stats published=%d dropped=%d received=%d malformed=%d gaps=%d missed=%d resubscribes=%d unknown=%d stray=%d suspended=%d",
			s.Published, s.PublishDropped, s.Received, s.Malformed, s.Gaps, s.Missed, s.Resubscribes, s.UnknownTargets, s.Stray, s.Suspended)
	default:
		reply("error unknown command %q", cmd)
	}
}
