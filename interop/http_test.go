package interop

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptrace"
	"testing"
	"time"
)

// TestNetHTTPClient drives examples/http with Go's net/http client: the
// loop handler, the echo of a POST body (sized and chunked), the route
// served through the net/http bridge, a 404, connection reuse, and the
// status page: on the admin address, a 404 on the application's.
func TestNetHTTPClient(t *testing.T) {
	addr, admin := startHTTPExample(t)
	base := "http://" + addr
	client := &http.Client{Timeout: 10 * time.Second}

	get := func(t *testing.T, path string, wantStatus int, wantBody string) {
		t.Helper()
		resp, err := client.Get(base + path)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatalf("GET %s: reading body: %v", path, err)
		}
		if resp.StatusCode != wantStatus || (wantBody != "" && string(body) != wantBody) {
			t.Fatalf("GET %s: %d %q, want %d %q", path, resp.StatusCode, body, wantStatus, wantBody)
		}
	}
	t.Run("hello", func(t *testing.T) { get(t, "/", 200, "Hello, World!") })
	t.Run("bridge", func(t *testing.T) { get(t, "/std/gopher", 200, "Hello, gopher, from net/http!\n") })
	t.Run("not found", func(t *testing.T) { get(t, "/nowhere", 404, "") })
	t.Run("no status on the application's address", func(t *testing.T) { get(t, "/status?format=json&conns=10", 404, "") })
	t.Run("status on the admin address", func(t *testing.T) {
		resp, err := client.Get("http://" + admin + "/status?format=json")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var rep struct{ Workers []struct{ Name string } }
		if err := json.NewDecoder(resp.Body).Decode(&rep); err != nil || len(rep.Workers) != 1 || rep.Workers[0].Name != "http" {
			t.Fatalf("GET /status?format=json: %d %+v %v", resp.StatusCode, rep, err)
		}
	})

	t.Run("post echo", func(t *testing.T) {
		body := bytes.Repeat([]byte("herd "), 50_000) // 250 KB
		for _, chunked := range []bool{false, true} {
			var r io.Reader = bytes.NewReader(body)
			if chunked {
				r = io.MultiReader(bytes.NewReader(body)) // unknown length: sent chunked
			}
			req, _ := http.NewRequest("POST", base+"/echo", r)
			resp, err := client.Do(req)
			if err != nil {
				t.Fatalf("POST (chunked %v): %v", chunked, err)
			}
			got, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil || resp.StatusCode != 200 || !bytes.Equal(got, body) {
				t.Fatalf("POST (chunked %v): %d, %d of %d bytes, %v", chunked, resp.StatusCode, len(got), len(body), err)
			}
		}
	})

	t.Run("keep-alive reuse", func(t *testing.T) {
		var reused, fresh int
		trace := &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) {
			if info.Reused {
				reused++
			} else {
				fresh++
			}
		}}
		c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 1}}
		for i := 0; i < 20; i++ {
			req, _ := http.NewRequest("GET", base+"/", nil)
			req = req.WithContext(httptrace.WithClientTrace(req.Context(), trace))
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		if fresh != 1 || reused != 19 {
			t.Fatalf("20 sequential requests used %d new and %d reused connections, want 1 and 19", fresh, reused)
		}
	})

	t.Run("connection close", func(t *testing.T) {
		req, _ := http.NewRequest("GET", base+"/", nil)
		req.Close = true
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		// net/http removes "close" from the header and reports it here.
		if !resp.Close || string(body) != "Hello, World!" {
			t.Fatalf("Connection: close request: response Close=%v body %q", resp.Close, body)
		}
	})
}
