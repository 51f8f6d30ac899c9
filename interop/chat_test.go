package interop

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/seed358e4494/herd/redis/redistest"
)

// freePort is a loopback port free at the time of asking.
func freePort(t *testing.T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// TestChatBehindHAProxy runs examples/chat as two processes sharing one
// redis-server, behind HAProxy with the example's haproxy.cfg (ports
// rewritten to free ones), and drives headless Chromium tabs through
// HAProxy: two tabs land on different nodes and see each other's messages
// in one room; a private message reaches only its recipient.
func TestChatBehindHAProxy(t *testing.T) {
	haproxy := tool(t, "haproxy", "/usr/sbin/haproxy")
	r := redistest.Start(t)

	bin := filepath.Join(t.TempDir(), "chat")
	build := exec.Command("go", "build", "-o", bin, ".")
	build.Dir = "../examples/chat"
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building examples/chat: %v\n%s", err, out)
	}
	listening := regexp.MustCompile(`^chat: node (\S+) listening on http://(\S+) pid`)
	nodes := map[string]string{}
	for _, name := range []string{"one", "two"} {
		_, lines := startProcess(t, bin, "-addr", "tcp://127.0.0.1:0", "-redis", r.Addr, "-node", name, "-count", "2")
		select {
		case l := <-lines:
			m := listening.FindStringSubmatch(l)
			if m == nil {
				t.Fatalf("chat %s printed %q", name, l)
			}
			nodes[name] = m[2]
		case <-time.After(30 * time.Second):
			t.Fatalf("chat %s did not start", name)
		}
	}

	cfg, err := os.ReadFile("../examples/chat/haproxy.cfg")
	if err != nil {
		t.Fatal(err)
	}
	front := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	conf := strings.NewReplacer("127.0.0.1:8000", front, "127.0.0.1:8001", nodes["one"], "127.0.0.1:8002", nodes["two"]).Replace(string(cfg))
	if conf == string(cfg) {
		t.Fatal("haproxy.cfg no longer has the ports this test rewrites")
	}
	cfgPath := filepath.Join(t.TempDir(), "haproxy.cfg")
	if err := os.WriteFile(cfgPath, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(haproxy, "-c", "-f", cfgPath).CombinedOutput(); err != nil {
		t.Fatalf("haproxy -c: %v\n%s", err, out)
	}
	_, hlines := startProcess(t, haproxy, "-db", "-f", cfgPath)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if c, err := net.Dial("tcp", front); err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			var said []string
			for len(hlines) > 0 {
				said = append(said, <-hlines)
			}
			t.Fatalf("haproxy does not listen; it said: %q", said)
		}
	}

	browser := chromiumBrowser(t, 90*time.Second)
	url := "http://" + front + "/"
	poll := func(tab context.Context, what, js string) {
		t.Helper()
		// Polled on a timer: requestAnimationFrame, chromedp's default,
		// does not run in a tab in the background.
		if err := chromedp.Run(tab, chromedp.Poll(js, nil, chromedp.WithPollingInterval(50*time.Millisecond), chromedp.WithPollingTimeout(20*time.Second))); err != nil {
			var log string
			chromedp.Run(tab, chromedp.Text("#log", &log, chromedp.ByQuery))
			t.Fatalf("%s: %v (the tab's log: %q)", what, err, log)
		}
	}
	// open a tab, wait until it knows its node, and join room lobby as name.
	open := func(name string) (context.Context, string) {
		t.Helper()
		tab, _ := chromedp.NewContext(browser)
		if err := chromedp.Run(tab, chromedp.Navigate(url)); err != nil {
			t.Fatalf("tab %s: %v", name, err)
		}
		poll(tab, "tab "+name+" connected", `document.getElementById('node').textContent !== '…'`)
		var node string
		if err := chromedp.Run(tab,
			chromedp.Text("#node", &node, chromedp.ByQuery),
			chromedp.SendKeys("#name", name, chromedp.ByQuery),
			chromedp.Click("#join", chromedp.ByQuery),
		); err != nil {
			t.Fatalf("tab %s: %v", name, err)
		}
		poll(tab, "tab "+name+" joined", `document.getElementById('log').textContent.includes('`+name+` joined')`)
		return tab, node
	}
	alice, aliceNode := open("alice")
	bob, bobNode := open("bob")
	t.Logf("alice's tab is on node %s, bob's on node %s", aliceNode, bobNode)
	if aliceNode == bobNode {
		t.Fatalf("both tabs on node %s: HAProxy's round robin should have put them on different nodes", aliceNode)
	}
	say := func(tab context.Context, text string) {
		t.Helper()
		if err := chromedp.Run(tab, chromedp.SendKeys("#text", text, chromedp.ByQuery), chromedp.Click("#say", chromedp.ByQuery)); err != nil {
			t.Fatal(err)
		}
	}
	say(alice, "hello from alice")
	poll(bob, "alice's message in bob's tab", `document.getElementById('log').textContent.includes('alice: hello from alice (node `+aliceNode+`)')`)
	say(bob, "hello from bob")
	poll(alice, "bob's message in alice's tab", `document.getElementById('log').textContent.includes('bob: hello from bob (node `+bobNode+`)')`)

	carol, _ := open("carol")
	if err := chromedp.Run(alice,
		chromedp.SendKeys("#to", "bob", chromedp.ByQuery),
		chromedp.SendKeys("#ptext", "for bob only", chromedp.ByQuery),
		chromedp.Click("#psend", chromedp.ByQuery),
	); err != nil {
		t.Fatal(err)
	}
	poll(bob, "the private message in bob's tab", `document.getElementById('log').textContent.includes('private from alice to bob: for bob only')`)
	// Carol, in the same room, gets a later room message but never the
	// private one.
	say(alice, "to everyone again")
	poll(carol, "the room message in carol's tab", `document.getElementById('log').textContent.includes('to everyone again')`)
	var carolLog string
	chromedp.Run(carol, chromedp.Text("#log", &carolLog, chromedp.ByQuery))
	if strings.Contains(carolLog, "for bob only") {
		t.Errorf("carol saw the private message: %q", carolLog)
	}
}
