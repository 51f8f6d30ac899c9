package interop

import (
	"bufio"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// upgradable is examples/http run so that its upgrades can be followed:
// every generation prints its "listening ... pid N" line on the same
// stdout, and logs on the same stderr.
type upgradable struct {
	t      *testing.T
	bin    string
	addr   string
	admin  string        // examples/http's admin address ("" for the other examples)
	pid    int           // the generation serving now
	lines  chan string   // stdout lines
	mu     sync.Mutex    // guards stderr
	stderr []string      // log lines of every generation
	first  *exec.Cmd     // the first generation, this test's child
	reaped chan struct{} // closed once the first generation is waited for
}

func startUpgradable(t *testing.T, name string, args ...string) *upgradable {
	u := &upgradable{t: t, bin: buildExample(t, name), lines: make(chan string, 16), reaped: make(chan struct{})}
	// Pipes of our own, not exec's: exec closes its pipes when the first
	// generation exits, and the later ones write on them still.
	outR, outW, _ := os.Pipe()
	errR, errW, _ := os.Pipe()
	if name == "http" {
		args = append([]string{"-admin", "127.0.0.1:0"}, args...)
	}
	u.first = exec.Command(u.bin, append([]string{"-addr", "tcp://127.0.0.1:0", "-count", "2"}, args...)...)
	u.first.Stdout, u.first.Stderr = outW, errW
	if err := u.first.Start(); err != nil {
		t.Fatal(err)
	}
	outW.Close()
	errW.Close()
	go func() { u.first.Wait(); close(u.reaped) }()
	go func() {
		sc := bufio.NewScanner(outR)
		for sc.Scan() {
			u.lines <- sc.Text()
		}
	}()
	go func() {
		sc := bufio.NewScanner(errR)
		for sc.Scan() {
			u.mu.Lock()
			u.stderr = append(u.stderr, sc.Text())
			u.mu.Unlock()
		}
	}()
	u.addr, u.pid, u.admin = u.nextGeneration(name == "http")
	t.Cleanup(func() {
		syscall.Kill(u.pid, syscall.SIGTERM)
		if !waitGone(u.pid, 15*time.Second) {
			syscall.Kill(u.pid, syscall.SIGKILL)
			t.Errorf("the example (pid %d) did not stop within 15s of SIGTERM", u.pid)
		}
	})
	return u
}

var (
	listeningLine = regexp.MustCompile(`listening on http://(\S+) pid (\d+)`)
	adminLine     = regexp.MustCompile(`admin pages on http://(\S+) `)
)

// nextGeneration waits for a process's "listening" line and, if withAdmin,
// the line with its admin address that follows.
func (u *upgradable) nextGeneration(withAdmin bool) (addr string, pid int, admin string) {
	next := func(re *regexp.Regexp) []string {
		select {
		case line := <-u.lines:
			m := re.FindStringSubmatch(line)
			if m == nil {
				u.t.Fatalf("unexpected line from the example: %q", line)
			}
			return m
		case <-time.After(30 * time.Second):
			u.t.Fatal("the example printed no listening line within 30s")
		}
		return nil
	}
	m := next(listeningLine)
	pid, _ = strconv.Atoi(m[2])
	if withAdmin {
		admin = next(adminLine)[1]
	}
	return m[1], pid, admin
}

// upgrade signals the serving generation, waits for the next one to print
// its line, and for the old one to exit.
func (u *upgradable) upgrade() {
	old := u.pid
	if err := syscall.Kill(old, syscall.SIGHUP); err != nil {
		u.t.Fatal(err)
	}
	addr, pid, admin := u.nextGeneration(u.admin != "")
	if addr != u.addr || admin != u.admin {
		u.t.Fatalf("the new process listens on %s (admin %s), the old one on %s (admin %s)", addr, admin, u.addr, u.admin)
	}
	u.pid = pid
	if !waitGone(old, 15*time.Second) {
		u.t.Fatalf("the old process %d did not exit within 15s of the upgrade", old)
	}
}

// waitGone waits until pid has exited (a zombie counts: it serves nothing).
func waitGone(pid int, d time.Duration) bool {
	for deadline := time.Now().Add(d); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return true
		}
		// pid (comm) state ...
		if i := strings.LastIndexByte(string(b), ')'); i > 0 && i+2 < len(b) && b[i+2] == 'Z' {
			return true
		}
	}
	return false
}

// logged returns the first log line containing substr, or "".
func (u *upgradable) logged(substr string) string {
	u.mu.Lock()
	defer u.mu.Unlock()
	for _, l := range u.stderr {
		if strings.Contains(l, substr) {
			return l
		}
	}
	return ""
}

// runWrk runs wrk against the server for d and checks its report: every
// response 2xx, no socket error. during runs while wrk does.
func runWrk(t *testing.T, wrk, addr string, d time.Duration, extra []string, during func()) {
	args := append([]string{"-t", "2", "-c", "50", "-d", d.String(), "--timeout", "5s"}, extra...)
	cmd := exec.CommandContext(testContext(t, d+60*time.Second), wrk, append(args, "http://"+addr+"/")...)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	during()
	err := cmd.Wait()
	t.Logf("wrk %v\n%s", args, out.String())
	if err != nil {
		t.Fatalf("wrk: %v", err)
	}
	m := regexp.MustCompile(`(\d+) requests in`).FindStringSubmatch(out.String())
	if m == nil {
		t.Fatal("no request count in wrk's output")
	}
	if n, _ := strconv.Atoi(m[1]); n < 100 {
		t.Errorf("only %d requests completed", n)
	}
	if regexp.MustCompile(`Socket errors|Non-2xx`).MatchString(out.String()) {
		t.Error("wrk saw socket errors or non-2xx responses")
	}
}

// TestUpgradeUnderWrk upgrades examples/http three times (SIGHUP) while
// wrk loads it with keep-alive requests, then three times under
// Connection: close: not one socket error or non-2xx response, and each
// old process exits after draining. Then a new binary that fails to start
// leaves the old process serving, with the failure in its log.
func TestUpgradeUnderWrk(t *testing.T) {
	wrk := tool(t, "wrk")
	u := startUpgradable(t, "http")
	for _, tc := range []struct {
		name  string
		extra []string
	}{
		{"keep-alive", nil},
		{"connection-close", []string{"-H", "Connection: close"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			runWrk(t, wrk, u.addr, 5*time.Second, tc.extra, func() {
				for i := 0; i < 3; i++ {
					time.Sleep(time.Second)
					old := u.pid
					u.upgrade()
					t.Logf("upgrade %d: pid %d → %d", i+1, old, u.pid)
				}
			})
		})
	}
	// The admin pages' socket went from generation to generation too.
	c := &http.Client{Timeout: 10 * time.Second}
	if resp, err := c.Get("http://" + u.admin + "/status"); err != nil {
		t.Errorf("the admin pages after six upgrades: %v", err)
	} else {
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Errorf("the admin pages after six upgrades: %s", resp.Status)
		}
	}
	t.Run("failing-binary", func(t *testing.T) {
		// Replace the file as a deployment does (a new file renamed over
		// it): the running process's executable path names the new one.
		saved := u.bin + ".good"
		if err := os.Link(u.bin, saved); err != nil {
			t.Fatal(err)
		}
		defer os.Rename(saved, u.bin)
		broken := u.bin + ".broken"
		if err := os.WriteFile(broken, []byte("#!/bin/sh\necho broken build >&2\nexit 7\n"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(broken, u.bin); err != nil {
			t.Fatal(err)
		}
		pid := u.pid
		runWrk(t, wrk, u.addr, 2*time.Second, nil, func() {
			time.Sleep(500 * time.Millisecond)
			syscall.Kill(pid, syscall.SIGHUP)
			deadline := time.Now().Add(10 * time.Second)
			for u.logged("exit status 7") == "" && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
			}
		})
		if line := u.logged("exit status 7"); line == "" {
			t.Error("the old process logged no failed upgrade with the child's exit status")
		} else {
			t.Logf("logged: %s", line)
		}
		if syscall.Kill(pid, 0) != nil {
			t.Errorf("the old process %d is gone", pid)
		}
	})
}

// TestUpgradeAdmin upgrades examples/http twice (SIGHUP): each new
// process takes over the admin pages' socket with the application's (the
// same address, printed again), serves /status there, and /status stays a
// 404 on the application's address.
func TestUpgradeAdmin(t *testing.T) {
	u := startUpgradable(t, "http")
	c := &http.Client{Timeout: 10 * time.Second}
	defer c.CloseIdleConnections()
	status := func(url string) int {
		resp, err := c.Get(url)
		if err != nil {
			t.Fatalf("GET %s: %v", url, err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	for i := range 3 {
		if i > 0 {
			u.upgrade()
			c.CloseIdleConnections() // the old process is gone
		}
		if code := status("http://" + u.admin + "/status"); code != 200 {
			t.Errorf("generation %d: /status on the admin address: %d", i+1, code)
		}
		if code := status("http://" + u.addr + "/status"); code != 404 {
			t.Errorf("generation %d: /status on the application's address: %d, want 404", i+1, code)
		}
	}
}

// TestUpgradeWebSocket upgrades examples/websocket with WebSocket clients
// connected: they are served by the old process through the grace period,
// then get a close frame 1001 (Going Away); new clients reach the new
// process meanwhile, and the old one exits.
func TestUpgradeWebSocket(t *testing.T) {
	const grace = 500 * time.Millisecond
	u := startUpgradable(t, "websocket", "-upgrade-grace", grace.String())
	echo := func(c *websocket.Conn, msg string) error {
		c.SetWriteDeadline(time.Now().Add(5 * time.Second))
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if err := c.WriteMessage(websocket.TextMessage, []byte(msg)); err != nil {
			return err
		}
		_, got, err := c.ReadMessage()
		if err == nil && string(got) != msg {
			err = fmt.Errorf("echo %q, want %q", got, msg)
		}
		return err
	}
	dial := func() *websocket.Conn {
		c, _, err := websocket.DefaultDialer.Dial("ws://"+u.addr+"/echo", nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	old := make([]*websocket.Conn, 5)
	for i := range old {
		old[i] = dial()
		if err := echo(old[i], "before"); err != nil {
			t.Fatal(err)
		}
	}
	oldPID := u.pid
	syscall.Kill(oldPID, syscall.SIGHUP)
	_, u.pid, _ = u.nextGeneration(false)
	// Until the old process says it accepts no more, a new connection may
	// still land there (both processes accept from the same socket).
	for deadline := time.Now().Add(10 * time.Second); u.logged("accepts no more") == ""; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the old process never said it accepts no more")
		}
	}
	start := time.Now()
	// Within the grace period the old connections are served, and new
	// ones reach the new process.
	for _, c := range old {
		if err := echo(c, "during the grace period"); err != nil {
			t.Fatalf("old connection, during the grace period: %v", err)
		}
	}
	fresh := dial()
	if err := echo(fresh, "new process"); err != nil {
		t.Fatal(err)
	}
	for i, c := range old {
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, _, err := c.ReadMessage()
		var ce *websocket.CloseError
		if !errors.As(err, &ce) || ce.Code != websocket.CloseGoingAway {
			t.Errorf("old connection %d: %v, want a close frame 1001", i, err)
		}
	}
	if after := time.Since(start); after < grace/2 {
		t.Errorf("the close frames came %v after the new process was ready, before the %v grace", after, grace)
	}
	if !waitGone(oldPID, 15*time.Second) {
		t.Fatalf("the old process %d did not exit", oldPID)
	}
	if err := echo(fresh, "after the old process left"); err != nil {
		t.Errorf("the connection to the new process: %v", err)
	}
}
