package interop

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// buildExample builds examples/<name> (of the core module) into a
// temporary directory and returns the binary's path.
func buildExample(t *testing.T, name string) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), name)
	build := exec.Command("go", "build", "-o", bin, "./examples/"+name)
	build.Dir = ".."
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building examples/%s: %v\n%s", name, err, out)
	}
	return bin
}

// startExample builds examples/<name>, runs it on a free loopback port and
// returns the host:port it printed. The server is stopped with SIGTERM (then
// killed) when the test ends.
func startExample(t *testing.T, name string, args ...string) string {
	t.Helper()
	return startListening(t, buildExample(t, name), append([]string{"-addr", "tcp://127.0.0.1:0"}, args...)...)
}

// startHTTPExample builds examples/http and runs it with args, its
// application and its admin pages each on a free loopback port, and
// returns the host:port of each as it printed them.
func startHTTPExample(t *testing.T, args ...string) (addr, admin string) {
	t.Helper()
	bin := buildExample(t, "http")
	_, lines := startProcess(t, bin, append([]string{"-addr", "tcp://127.0.0.1:0", "-admin", "127.0.0.1:0"}, args...)...)
	for addr == "" || admin == "" {
		select {
		case line := <-lines:
			// "http: listening on http://127.0.0.1:PORT pid N", then
			// "http: admin pages on http://127.0.0.1:PORT (/status)"
			if a, ok := addrAfter(line, "listening on "); ok && addr == "" {
				addr = a
			} else if a, ok := addrAfter(line, "admin pages on "); ok {
				admin = a
			} else {
				t.Fatalf("unexpected line from examples/http: %q", line)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("examples/http printed no addresses within 30s (got %q and %q)", addr, admin)
		}
	}
	return addr, admin
}

// addrAfter finds marker in line and returns the host:port after it
// (without a scheme).
func addrAfter(line, marker string) (string, bool) {
	_, rest, ok := strings.Cut(line, marker)
	if !ok {
		return "", false
	}
	addr, _, _ := strings.Cut(rest, " ")
	if i := strings.Index(addr, "://"); i >= 0 {
		addr = addr[i+3:]
	}
	return addr, true
}

// startListening runs the command bin with args (stopped when the test
// ends) and returns the host:port of the "listening on" its first line
// says.
func startListening(t *testing.T, bin string, args ...string) string {
	t.Helper()
	name := filepath.Base(bin)
	_, lines := startProcess(t, bin, args...)
	select {
	case line := <-lines:
		// "<name>: listening on http://127.0.0.1:PORT pid N"
		addr, ok := addrAfter(line, "listening on ")
		if !ok {
			t.Fatalf("unexpected first line from examples/%s: %q", name, line)
		}
		return addr
	case <-time.After(30 * time.Second):
		t.Fatalf("examples/%s printed no address within 30s", name)
	}
	return ""
}

// tool finds an external program; missing, the test is skipped, or fails
// under CI, which is expected to have installed it.
func tool(t *testing.T, name string, paths ...string) string {
	t.Helper()
	for _, p := range paths {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("%s is not installed; .ci/run should have installed it", name)
	}
	t.Skipf("%s is not installed", name)
	return ""
}

func testContext(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// chromiumBrowser starts headless Chromium for the test (its profile in a
// temporary directory) and returns the browser's context; each
// chromedp.NewContext of it is a tab. Background tabs are not throttled.
func chromiumBrowser(t *testing.T, timeout time.Duration, extra ...chromedp.ExecAllocatorOption) context.Context {
	chromium := tool(t, "chromium", "/usr/bin/chromium")
	// The profile is removed last, and again while Chromium's last
	// writes land (t.TempDir fails the test when they race its removal).
	profile, err := os.MkdirTemp("", "herd-chromium")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for i := 0; os.RemoveAll(profile) != nil && i < 50; i++ {
			time.Sleep(100 * time.Millisecond)
		}
	})
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromium),
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-timer-throttling", true),
		chromedp.Flag("disable-renderer-backgrounding", true),
		chromedp.Flag("disable-backgrounding-occluded-windows", true),
		chromedp.UserDataDir(profile),
	)
	opts = append(opts, extra...)
	alloc, cancel := chromedp.NewExecAllocator(testContext(t, timeout), opts...)
	t.Cleanup(cancel)
	browser, cancelBrowser := chromedp.NewContext(alloc)
	t.Cleanup(cancelBrowser)
	if err := chromedp.Run(browser); err != nil {
		t.Fatalf("starting Chromium: %v", err)
	}
	return browser
}

// startProcess runs a command until the test ends (SIGTERM, then SIGKILL),
// its stderr on the test's; it returns the command and its stdout lines.
func startProcess(t *testing.T, name string, args ...string) (*exec.Cmd, chan string) {
	cmd := exec.Command(name, args...)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-exited
			t.Errorf("%s (pid %d) did not stop within 10s of SIGTERM", name, cmd.Process.Pid)
		}
	})
	lines := make(chan string, 64)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			select {
			case lines <- sc.Text():
			default:
			}
		}
	}()
	return cmd, lines
}
