package interop

import (
	"io"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// TestCurlHTTPS: curl --insecure against examples/http -tls (a
// self-signed certificate made at start): the application's routes over
// TLS, /status a 404 there, and served in plain HTTP on the admin address.
func TestCurlHTTPS(t *testing.T) {
	curl := tool(t, "curl")
	addr, admin := startHTTPExample(t, "-tls")
	for _, tc := range []struct {
		url  string
		code string
	}{
		{"https://" + addr + "/", "200"},
		{"https://" + addr + "/std/gopher", "200"},
		{"https://" + addr + "/status", "404"},
		{"https://" + addr + "/status?conns=10", "404"},
		{"http://" + admin + "/status", "200"},
	} {
		out, err := exec.CommandContext(testContext(t, 30*time.Second), curl, "--silent", "--show-error", "--insecure", "--http1.1",
			"--write-out", "\n%{http_code}", tc.url).CombinedOutput()
		if err != nil {
			t.Fatalf("curl %s: %v\n%s", tc.url, err, out)
		}
		body, code := string(out), ""
		if i := strings.LastIndexByte(body, '\n'); i >= 0 {
			body, code = body[:i], body[i+1:]
		}
		if code != tc.code {
			t.Errorf("curl %s: %s %q, want %s", tc.url, code, body, tc.code)
		}
		if strings.HasSuffix(tc.url, addr+"/") && body != "Hello, World!" {
			t.Errorf("curl %s: %q", tc.url, body)
		}
	}
}

// TestOpenSSLClient: openssl s_client with TLS 1.2 and 1.3 gets the
// response; a TLS 1.2 renegotiation (s_client's R command) is refused with
// an alert.
func TestOpenSSLClient(t *testing.T) {
	openssl := tool(t, "openssl")
	addr, _ := startHTTPExample(t, "-tls")
	for _, v := range []string{"-tls1_2", "-tls1_3"} {
		cmd := exec.CommandContext(testContext(t, 30*time.Second), openssl, "s_client", "-connect", addr, v, "-quiet")
		cmd.Stdin = strings.NewReader("GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
		out, _ := cmd.Output()
		if !strings.HasSuffix(string(out), "Hello, World!") {
			t.Errorf("openssl s_client %s: %q", v, out)
		}
	}
	cmd := exec.CommandContext(testContext(t, 30*time.Second), openssl, "s_client", "-connect", addr, "-tls1_2")
	stdin, _ := cmd.StdinPipe()
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	io.WriteString(stdin, "R\n")
	time.Sleep(time.Second)
	stdin.Close()
	cmd.Wait()
	if !strings.Contains(out.String(), "RENEGOTIATING") || !strings.Contains(out.String(), "alert") {
		t.Errorf("renegotiation was not refused with an alert:\n%s", out.String())
	}
}

// TestChromiumWSS: examples/websocket -tls in headless Chromium (the
// self-signed certificate's errors ignored): a chat message typed in one
// tab reaches the other over wss.
func TestChromiumWSS(t *testing.T) {
	browser := chromiumBrowser(t, 60*time.Second, chromedp.Flag("ignore-certificate-errors", true))
	addr := startExample(t, "websocket", "-tls")
	url := "https://" + addr + "/"
	connected := `document.getElementById('status').textContent === 'connected'`
	tab1, cancel1 := chromedp.NewContext(browser)
	defer cancel1()
	if err := chromedp.Run(tab1, chromedp.Navigate(url), chromedp.Poll(connected, nil, chromedp.WithPollingInterval(50*time.Millisecond), chromedp.WithPollingTimeout(20*time.Second))); err != nil {
		t.Fatalf("tab 1: %v", err)
	}
	tab2, cancel2 := chromedp.NewContext(browser)
	defer cancel2()
	if err := chromedp.Run(tab2, chromedp.Navigate(url), chromedp.Poll(connected, nil, chromedp.WithPollingInterval(50*time.Millisecond), chromedp.WithPollingTimeout(20*time.Second))); err != nil {
		t.Fatalf("tab 2: %v", err)
	}
	var proto string
	chromedp.Run(tab1, chromedp.Evaluate(`location.protocol`, &proto))
	if proto != "https:" {
		t.Fatalf("the page was served over %s", proto)
	}
	const msg = "hello over wss"
	if err := chromedp.Run(tab1, chromedp.SendKeys("#msg", msg, chromedp.ByQuery), chromedp.Click("#send", chromedp.ByQuery)); err != nil {
		t.Fatal(err)
	}
	arrived := `document.getElementById('log').textContent.includes('` + msg + `')`
	if err := chromedp.Run(tab2, chromedp.Poll(arrived, nil, chromedp.WithPollingInterval(50*time.Millisecond), chromedp.WithPollingTimeout(20*time.Second))); err != nil {
		t.Fatalf("the message did not reach tab 2: %v", err)
	}
}
