package balancer

// Health: active checks run on the worker's loop 0 (which Worker.Scale
// never takes away), dialed with herd's own Loop.Dial, so that they cost
// no goroutine; passive ejection counts the failed connects of proxied
// connections on every loop.

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/seed358e4494/herd"
)

// weightScale is how finely slow start grows a weight: effective weights
// are weight×weightScale, which the pickers only compare with each other.
const weightScale = 100

// housekeeping is how often loop 0 updates slow-start weights and ends
// ejections.
const housekeeping = 100 * time.Millisecond

func (b *Balancer) rise() int32 {
	if b.Health.Rise > 0 {
		return int32(b.Health.Rise)
	}
	return DefaultRise
}

func (b *Balancer) fall() int32 {
	if b.Health.Fall > 0 {
		return int32(b.Health.Fall)
	}
	return DefaultFall
}

// startChecks starts the housekeeping and the active checks on l.
func (b *Balancer) startChecks(l *herd.Loop) {
	l.Every(housekeeping, func() { b.housekeep(l.Now()) })
	if iv := b.Health.Interval; iv > 0 {
		checks := make([]*check, len(b.backends))
		for i, be := range b.backends {
			checks[i] = &check{b: b, be: be, l: l}
		}
		l.Every(iv, func() {
			for _, c := range checks {
				c.start()
			}
		})
	}
}

// housekeep grows slow-starting weights and brings back backends whose
// ejection is over.
func (b *Balancer) housekeep(now time.Time) {
	t := now.UnixNano()
	for _, be := range b.backends {
		if be.down.Load() {
			if b.Health.Interval == 0 && time.Duration(t-be.downSince.Load()) >= b.ejectFor() {
				b.markUp(be, now, "ejection over")
			}
			continue
		}
		if b.SlowStart > 0 && time.Duration(t-be.upSince.Load()) <= b.SlowStart+housekeeping {
			b.reweigh(be, t)
		}
	}
}

func (b *Balancer) ejectFor() time.Duration {
	if b.Health.EjectFor > 0 {
		return b.Health.EjectFor
	}
	return DefaultEjectFor
}

// reweigh sets the weight pickers see: none while down or draining, a
// growing share during slow start, the whole weight otherwise.
func (b *Balancer) reweigh(be *backend, now int64) {
	w := int64(be.weight) * weightScale
	switch {
	case !be.usable():
		w = 0
	case b.SlowStart > 0 && be.upSince.Load() != 0:
		if up := time.Duration(now - be.upSince.Load()); up < b.SlowStart {
			w = max(w/10, w*int64(up)/int64(b.SlowStart), 1)
		}
	}
	be.effWeight.Store(int32(w))
}

// failed counts a failed connect or check against be: Fall in a row mark
// it down.
func (b *Balancer) failed(be *backend, err error) {
	be.passes.Store(0)
	if be.fails.Add(1) >= b.fall() && !be.down.Load() {
		b.markDown(be, err)
	}
}

// passed counts a passed check: Rise in a row mark a down backend up.
func (b *Balancer) passed(be *backend, now time.Time) {
	be.fails.Store(0)
	if be.passes.Add(1) >= b.rise() && be.down.Load() {
		b.markUp(be, now, "checks passed")
	}
}

func (b *Balancer) markDown(be *backend, err error) {
	if !be.down.CompareAndSwap(false, true) {
		return
	}
	be.downSince.Store(time.Now().UnixNano())
	be.passes.Store(0)
	be.effWeight.Store(0)
	b.logger().Info("balancer: backend down", "backend", be.addr, "err", err)
}

func (b *Balancer) markUp(be *backend, now time.Time, why string) {
	if !be.down.Load() {
		return
	}
	t := now.UnixNano()
	be.downTotal.Add(t - be.downSince.Load())
	be.downSince.Store(0)
	be.upSince.Store(t)
	be.fails.Store(0)
	be.down.Store(false)
	b.reweigh(be, t)
	b.logger().Info("balancer: backend up", "backend", be.addr, "why", why)
}

// check is the active check of one backend; it lives on loop 0.
type check struct {
	b       *Balancer
	be      *backend
	l       *herd.Loop
	running bool
	conn    *herd.Conn
	timer   *herd.Timer
	resp    []byte // the start of an HTTP answer
}

// start begins a check unless the last one is still running.
func (c *check) start() {
	if c.running {
		return
	}
	c.running = true
	c.resp = c.resp[:0]
	timeout := c.b.Health.Timeout
	if timeout <= 0 {
		timeout = c.b.Health.Interval
	}
	d := &herd.Dialer{Timeout: timeout, OnConnect: c.connected, OnMessage: c.message, OnClose: c.closed, OnError: c.dialError}
	conn, err := c.l.Dial(c.b.ctx, c.be.addr, d)
	if err != nil {
		c.end(false, err)
		return
	}
	c.conn = conn
	c.timer = c.l.AfterFunc(timeout, func() { c.end(false, errCheckTimeout) })
}

func (c *check) connected(conn *herd.Conn) {
	if c.b.Health.HTTPPath == "" {
		c.end(true, nil)
		return
	}
	host := identity(c.be.addr)
	if strings.HasPrefix(c.be.addr, "unix://") {
		host = "localhost" // a path is no Host
	}
	req := "GET " + c.b.Health.HTTPPath + " HTTP/1.0\r\nHost: " + host + "\r\nUser-Agent: herd-balancer\r\n\r\n"
	conn.Write([]byte(req))
}

// message reads the status line of the check's HTTP answer.
func (c *check) message(_ *herd.Conn, data []byte) {
	c.resp = append(c.resp, data...)
	if done, err := checkStatus(c.resp); done {
		c.end(err == nil, err)
	}
}

// maxStatusLine bounds what a check reads of an answer looking for its
// status line.
const maxStatusLine = 4096

// checkStatus reads an HTTP answer's status line from the start of resp:
// done once it is complete (or cannot be), with nil for 2xx and 3xx.
func checkStatus(resp []byte) (done bool, err error) {
	line, _, found := bytes.Cut(resp, []byte("\r\n"))
	switch {
	case found:
		// "HTTP/1.x NNN reason", the reason possibly empty.
		if len(line) >= 12 && bytes.HasPrefix(line, []byte("HTTP/1.")) && line[8] == ' ' &&
			(line[9] == '2' || line[9] == '3') && isDigit(line[10]) && isDigit(line[11]) && (len(line) == 12 || line[12] == ' ') {
			return true, nil
		}
		return true, &checkError{fmt.Sprintf("answered %.80q", line)}
	case len(resp) > maxStatusLine:
		return true, &checkError{"no status line in the first 4096 bytes"}
	}
	return false, nil
}

func isDigit(b byte) bool { return '0' <= b && b <= '9' }

func (c *check) closed(*herd.Conn) {
	c.end(false, &checkError{"closed without an answer"})
}

func (c *check) dialError(_ *herd.Conn, err error) {
	if errors.Is(err, herd.ErrWorkerClosed) {
		// The stop ended the check: it has no result, and the backend
		// did not fail it.
		c.finish()
		return
	}
	c.end(false, err)
}

// end records the check's result, once.
func (c *check) end(ok bool, err error) {
	if !c.finish() {
		return
	}
	if ok {
		c.b.passed(c.be, c.l.Now())
		return
	}
	c.be.checksFailed.Add(1)
	c.b.failed(c.be, err)
}

// finish ends the check under way, without a result (its connection ends
// with it), and reports whether there was one.
func (c *check) finish() bool {
	if !c.running {
		return false
	}
	c.running = false
	if c.timer != nil {
		c.timer.Stop()
		c.timer = nil
	}
	if c.conn != nil {
		conn := c.conn
		c.conn = nil
		conn.Abort() // a no-op for the connection whose failure ends it
	}
	return true
}

// checkError is a failed check's reason.
type checkError struct{ reason string }

func (e *checkError) Error() string { return "balancer: health check: " + e.reason }

var errCheckTimeout = &checkError{"timed out"}
