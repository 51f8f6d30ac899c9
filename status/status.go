//go:build linux || darwin || freebsd

// Package status serves herd workers' per-loop figures over HTTP, as
// Workerman's `php start.php status` prints them: a text table by default,
// JSON when asked (?format=json, or an Accept header naming
// application/json). The table reads each Worker's Stats and nothing else.
// A udp:// worker's table is followed by its datagram figures per loop:
// datagrams read, dropped as oversize, dropped by the kernel on a full
// receive buffer (LoopStats.KernelDrops, Linux only) and replies not sent.
//
// With ?conns=N it also lists up to N open connections (at most
// MaxListed), as `php start.php connections` does: ID, loop, remote
// address, time since the connection last read or wrote, and the bytes
// waiting in its send queue. Each loop lists its own connections on its own
// goroutine (Loop.Post, Loop.Conns), a few microseconds per connection; the
// request waits for them at most ListTimeout and never blocks a loop.
// Per-connection byte counts and ages are not kept: they would add to
// every idle connection's memory.
//
// # Who may see it
//
// The page is for the operator. The table tells how many connections the
// server holds and how busy it is; ?conns=N tells every client's IP
// address and port and how long each connection has been idle, for up to
// MaxListed connections, to whoever asks. Handler checks no credentials:
// do not mount it on the application's public address. Serve it on an
// admin listener bound to loopback (or a unix socket, or a private
// network that only operators and the scraper reach), as HAProxy's stats
// page, nginx's stub_status and net/http/pprof usually are, or behind
// authentication:
//
//	admin := http.NewServeMux()
//	admin.Handle("/status", status.Handler(w))
//	go http.ListenAndServe("127.0.0.1:9091", admin) // not the application's port
//
// examples/http does the same on herd: a second Worker, named "admin", on
// -admin (127.0.0.1:9091 by default) serves /status through
// protocol/http's Bridge, and /status is a 404 on the application's
// address. A worker (rather than net/http's server) keeps the admin
// socket across package upgrade's upgrades.
package status

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/seed358e4494/herd"
)

// Handler serves the figures of the given workers to whoever reaches it:
// it checks no credentials (see the package documentation).
func Handler(workers ...*herd.Worker) http.Handler {
	return http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			rw.Header().Set("Allow", "GET, HEAD")
			http.Error(rw, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		stats := make([]herd.Stats, len(workers))
		for i, w := range workers {
			stats[i] = w.Stats()
		}
		var conns []Conn
		if n, err := strconv.Atoi(r.URL.Query().Get("conns")); err == nil && n > 0 {
			ctx, cancel := context.WithTimeout(r.Context(), ListTimeout)
			conns = list(ctx, workers, min(n, MaxListed))
			cancel()
		}
		rw.Header().Set("Cache-Control", "no-store")
		if wantsJSON(r) {
			rw.Header().Set("Content-Type", "application/json")
			json.NewEncoder(rw).Encode(report{Time: time.Now().UTC(), Workers: stats, Conns: conns})
			return
		}
		rw.Header().Set("Content-Type", "text/plain; charset=utf-8")
		for i, s := range stats {
			rw.Write([]byte(s.String()))
			if strings.HasPrefix(workers[i].Addr, "udp") {
				writeDatagrams(rw, s)
			}
		}
		if conns != nil {
			fmt.Fprintf(rw, "%-8s %10s %5s %-40s %12s %10s\n", "worker", "conn", "loop", "remote", "idle", "queued")
			for _, c := range conns {
				fmt.Fprintf(rw, "%-8s %10d %5d %-40s %12s %10d\n", c.Worker, c.ID, c.Loop, c.Remote, c.Idle.Round(time.Millisecond), c.Queued)
			}
		}
	})
}

// writeDatagrams writes a udp:// worker's datagram figures, a row per
// loop.
func writeDatagrams(rw http.ResponseWriter, s herd.Stats) {
	fmt.Fprintf(rw, "%4s %11s %9s %12s %12s\n", "loop", "datagrams", "oversize", "kernel-drops", "reply-drops")
	for _, l := range s.Loops {
		fmt.Fprintf(rw, "%4d %11d %9d %12d %12d\n", l.Index, l.MessagesIn, l.Oversize, l.KernelDrops, l.Dropped)
	}
}

// Limits of the connection listing.
const (
	MaxListed   = 10000
	ListTimeout = 2 * time.Second
)

// Conn is one line of the connection listing.
type Conn struct {
	Worker string        `json:"worker"`
	ID     uint64        `json:"id"`
	Loop   int           `json:"loop"`
	Remote string        `json:"remote"`
	Idle   time.Duration `json:"idle_ns"`
	Queued int           `json:"queued_bytes"`
}

// report is the JSON document: a snapshot time, each worker's Stats and,
// if asked for, the connections.
type report struct {
	Time    time.Time    `json:"time"`
	Workers []herd.Stats `json:"workers"`
	Conns   []Conn       `json:"connections,omitempty"`
}

// list collects up to limit connections, each loop listing its own on its
// goroutine; loops that have not answered when ctx ends are left out.
func list(ctx context.Context, workers []*herd.Worker, limit int) []Conn {
	out := []Conn{}
	for _, w := range workers {
		for _, l := range w.Loops() {
			if len(out) >= limit {
				return out
			}
			room := limit - len(out)
			got := make(chan []Conn, 1)
			if !l.Post(func() {
				var cs []Conn
				now := l.Now()
				l.Conns(func(c *herd.Conn) bool {
					remote := ""
					if a := c.RemoteAddr(); a != nil {
						remote = a.String()
					}
					cs = append(cs, Conn{Worker: w.Name, ID: c.ID(), Loop: l.Index(), Remote: remote,
						Idle: max(now.Sub(c.LastActive()), 0), Queued: c.SendQueueBytes()})
					return len(cs) < room
				})
				got <- cs
			}) {
				continue // the loop has stopped
			}
			select {
			case cs := <-got:
				out = append(out, cs...)
			case <-ctx.Done():
				return out
			}
		}
	}
	return out
}

func wantsJSON(r *http.Request) bool {
	if f := r.URL.Query().Get("format"); f != "" {
		return f == "json"
	}
	return strings.Contains(r.Header.Get("Accept"), "application/json")
}
