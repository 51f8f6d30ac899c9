package interop

import (
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// TestChromiumChat opens examples/websocket's chat page in two tabs of
// headless Chromium and checks that a message typed in one appears in the
// other.
func TestChromiumChat(t *testing.T) {
	browser := chromiumBrowser(t, 60*time.Second)
	addr := startExample(t, "websocket")
	tab1, cancel1 := chromedp.NewContext(browser)
	defer cancel1()
	url := "http://" + addr + "/"
	connected := `document.getElementById('status').textContent === 'connected'`
	if err := chromedp.Run(tab1, chromedp.Navigate(url), chromedp.Poll(connected, nil, chromedp.WithPollingTimeout(20*time.Second))); err != nil {
		t.Fatalf("tab 1: %v", err)
	}
	tab2, cancel2 := chromedp.NewContext(tab1) // a second tab in the same browser
	defer cancel2()
	if err := chromedp.Run(tab2, chromedp.Navigate(url), chromedp.Poll(connected, nil, chromedp.WithPollingTimeout(20*time.Second))); err != nil {
		t.Fatalf("tab 2: %v", err)
	}
	const msg = "hello from tab 1"
	if err := chromedp.Run(tab1, chromedp.SendKeys("#msg", msg, chromedp.ByQuery), chromedp.Click("#send", chromedp.ByQuery)); err != nil {
		t.Fatalf("typing in tab 1: %v", err)
	}
	arrived := `document.getElementById('log').textContent.includes('` + msg + `')`
	if err := chromedp.Run(tab2, chromedp.Poll(arrived, nil, chromedp.WithPollingTimeout(20*time.Second))); err != nil {
		var log string
		chromedp.Run(tab2, chromedp.Text("#log", &log, chromedp.ByQuery))
		t.Fatalf("message did not reach tab 2: %v (its log: %q)", err, log)
	}
}
