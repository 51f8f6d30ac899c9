//go:build linux || darwin || freebsd

// Package status serves herd workers' per-loop figures over HTTP, as
// Workerman's `php start.php status` prints them: a text table by default,
// JSON when asked (?format=json, or an Accept header naming
// application/json). It reads each Worker's Stats per request and nothing
// else, so a status request never waits on, or blocks, a loop.
//
//	http.Handle("/status", status.Handler(w))
package status

import (
	"encoding/json"
	"net/http"
	"strings"
	"time"

	"github.com/seed358e4494/herd"
)

// Handler serves the figures of the given workers.
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
		rw.Header().Set("Cache-Control", "no-store")
		if wantsJSON(r) {
			rw.Header().Set("Content-Type", "application/json")
			json.NewEncoder(rw).Encode(report{Time: time.Now().UTC(), Workers: stats})
			return
		}
		rw.Header().Set("Content-Type", "text/plain; charset=utf-8")
		for _, s := range stats {
			rw.Write([]byte(s.String()))
		}
	})
}

// report is the JSON document: a snapshot time and each worker's Stats.
type report struct {
	Time    time.Time    `json:"time"`
	Workers []herd.Stats `json:"workers"`
}

func wantsJSON(r *http.Request) bool {
	if f := r.URL.Query().Get("format"); f != "" {
		return f == "json"
	}
	return strings.Contains(r.Header.Get("Accept"), "application/json")
}
