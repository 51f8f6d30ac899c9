//go:build linux || darwin || freebsd

package status

import (
	"bufio"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/seed358e4494/herd"
	"github.com/seed358e4494/herd/internal/herdtest"
)

func TestHandler(t *testing.T) {
	w := &herd.Worker{Name: "echo", Addr: "text://127.0.0.1:0", Count: 2, Logger: slog.New(slog.DiscardHandler),
		OnMessage: func(c *herd.Conn, msg []byte) { c.Send(msg) }}
	addr := herdtest.Run(t, w)
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c, "hi\n")
	if l, err := bufio.NewReader(c).ReadString('\n'); err != nil || l != "hi\n" {
		t.Fatalf("echo %q %v", l, err)
	}
	srv := httptest.NewServer(Handler(w))
	defer srv.Close()

	get := func(url string, accept string) (*http.Response, string) {
		req, _ := http.NewRequest("GET", url, nil)
		if accept != "" {
			req.Header.Set("Accept", accept)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, string(b)
	}

	resp, text := get(srv.URL, "")
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain") ||
		!strings.Contains(text, `worker "echo"`) || !strings.Contains(text, "busy%") {
		t.Fatalf("text: %d %q\n%s", resp.StatusCode, resp.Header.Get("Content-Type"), text)
	}

	for _, q := range []struct{ url, accept string }{{srv.URL + "?format=json", ""}, {srv.URL, "application/json"}} {
		resp, body := get(q.url, q.accept)
		var rep struct {
			Workers []herd.Stats
		}
		if err := json.Unmarshal([]byte(body), &rep); err != nil || resp.Header.Get("Content-Type") != "application/json" {
			t.Fatalf("json: %v %q\n%s", err, resp.Header.Get("Content-Type"), body)
		}
		if len(rep.Workers) != 1 || rep.Workers[0].Name != "echo" || len(rep.Workers[0].Loops) != 2 {
			t.Fatalf("json report %+v", rep)
		}
		var accepted, messages uint64
		for _, l := range rep.Workers[0].Loops {
			accepted += l.Accepted
			messages += l.MessagesIn
		}
		if accepted != 1 || messages != 1 {
			t.Errorf("json: %d accepted, %d messages; want 1 and 1", accepted, messages)
		}
	}

	// The connection listing: the one client, by its address.
	resp, body := get(srv.URL+"?format=json&conns=10", "")
	var rep struct{ Connections []Conn }
	if err := json.Unmarshal([]byte(body), &rep); err != nil {
		t.Fatal(err)
	}
	if len(rep.Connections) != 1 || rep.Connections[0].Remote != c.LocalAddr().String() || rep.Connections[0].Worker != "echo" {
		t.Fatalf("listing %+v, want the one client %s", rep.Connections, c.LocalAddr())
	}
	if _, text := get(srv.URL+"?conns=1", ""); !strings.Contains(text, c.LocalAddr().String()) {
		t.Errorf("text listing without the client:\n%s", text)
	}
	if _, body := get(srv.URL+"?format=json", ""); strings.Contains(body, "connections") {
		t.Errorf("connections listed without ?conns")
	}
	_ = resp
	// Bounded: 6 connections, 3 asked for.
	for i := 0; i < 5; i++ {
		more, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer more.Close()
	}
	deadline := time.Now().Add(5 * time.Second)
	for n := int64(0); n < 6 && time.Now().Before(deadline); {
		n = 0
		for _, l := range w.Stats().Loops {
			n += l.Active
		}
		time.Sleep(5 * time.Millisecond)
	}
	_, body = get(srv.URL+"?format=json&conns=3", "")
	rep.Connections = nil
	if err := json.Unmarshal([]byte(body), &rep); err != nil || len(rep.Connections) != 3 {
		t.Errorf("conns=3 listed %d (%v)", len(rep.Connections), err)
	}

	req, _ := http.NewRequest("POST", srv.URL, nil)
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST: %v %v", resp, err)
	}
}

// TestDatagrams: a udp:// worker's page has its datagram table, whose
// kernel-drops column is Stats' KernelDrops: the one loop is held on its
// first datagram while 10,000 more overflow its socket.
func TestDatagrams(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("kernel drops are counted on Linux only")
	}
	w := herdtest.OverflowedUDP(t, "dns")
	want := w.Stats().Loops[0].KernelDrops
	srv := httptest.NewServer(Handler(w))
	defer srv.Close()
	resp, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	lines := strings.Split(string(body), "\n")
	for i, l := range lines {
		if f := strings.Fields(l); len(f) == 5 && f[3] == "kernel-drops" {
			row := strings.Fields(lines[i+1])
			if len(row) != 5 || row[0] != "0" || row[3] != strconv.FormatUint(want, 10) {
				t.Fatalf("datagram row %q, want loop 0 with %d kernel drops\n%s", lines[i+1], want, body)
			}
			t.Logf("%s\n%s", l, lines[i+1])
			return
		}
	}
	t.Fatalf("no datagram table:\n%s", body)
}
