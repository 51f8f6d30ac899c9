package harness

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Load kinds the client generates.
const (
	KindEcho      = "echo"       // ping-pong of Size bytes on Conns connections
	KindHTTP      = "http"       // keep-alive GET on Conns connections, Depth requests per write
	KindHTTPClose = "http-close" // one GET with Connection: close per connection, Conns at a time
	KindIdle      = "idle"       // open Conns connections and hold them
)

// ClientConfig is what the parent tells the load-generator process.
type ClientConfig struct {
	Kind  string
	Addr  string
	Conns int
	Size  int // echo message size
	Depth int // HTTP pipelining depth (1: not pipelined)
}

// ClientResult is what one run of the load generator measured.
type ClientResult struct {
	Ops      int64
	Elapsed  time.Duration
	P50, P99 time.Duration
	Errors   int64
	Err      string `json:",omitempty"`
}

// clientEnv carries the ClientConfig (JSON) to the child process.
const clientEnv = "HERDBENCH_CLIENT"

// IsClient reports whether this process was started as a load generator.
// A TestMain or main calls it first and, if so, runs ClientMain.
func IsClient() bool { return os.Getenv(clientEnv) != "" }

// ClientMain runs the load generator: it connects, prints "ready", then
// serves "run COUNT DURATION_NS" commands from stdin with one JSON result
// line each, until "quit" or the end of stdin. It returns the exit code.
func ClientMain() int {
	var cfg ClientConfig
	if err := json.Unmarshal([]byte(os.Getenv(clientEnv)), &cfg); err != nil {
		fmt.Fprintln(os.Stderr, "herdbench client:", err)
		return 2
	}
	raiseNoFile()
	cl := &loadClient{cfg: cfg}
	if err := cl.connect(); err != nil {
		fmt.Fprintln(os.Stderr, "herdbench client: connect:", err)
		return 1
	}
	out := bufio.NewWriter(os.Stdout)
	fmt.Fprintln(out, "ready")
	out.Flush()
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		f := strings.Fields(in.Text())
		if len(f) == 0 {
			continue
		}
		switch f[0] {
		case "quit":
			cl.close()
			return 0
		case "run":
			if len(f) != 3 {
				fmt.Fprintln(os.Stderr, "herdbench client: bad command", in.Text())
				return 2
			}
			count, _ := strconv.ParseInt(f[1], 10, 64)
			dur, _ := strconv.ParseInt(f[2], 10, 64)
			res := cl.run(count, time.Duration(dur))
			b, _ := json.Marshal(res)
			out.Write(b)
			out.WriteByte('\n')
			out.Flush()
		}
	}
	cl.close()
	return 0
}

func raiseNoFile() {
	var rl unix.Rlimit
	if unix.Getrlimit(unix.RLIMIT_NOFILE, &rl) == nil && rl.Cur < rl.Max {
		rl.Cur = rl.Max
		unix.Setrlimit(unix.RLIMIT_NOFILE, &rl)
	}
}

type loadClient struct {
	cfg   ClientConfig
	conns []net.Conn
}

// dialer spreads connections over the source addresses 127.0.0.1-9 with
// IP_BIND_ADDRESS_NO_PORT, so that the port is chosen at connect time for
// the whole 4-tuple: many short connections then do not run out of
// ephemeral ports to TIME_WAIT.
func dialer(i int) *net.Dialer {
	return &net.Dialer{
		Timeout:   10 * time.Second,
		LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(1+i%9))},
		Control: func(network, address string, c syscall.RawConn) error {
			var serr error
			err := c.Control(func(fd uintptr) {
				serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1)
			})
			if err != nil {
				return err
			}
			return serr
		},
	}
}

func (cl *loadClient) connect() error {
	if cl.cfg.Kind == KindHTTPClose {
		return nil
	}
	for i := 0; i < cl.cfg.Conns; i++ {
		c, err := dialer(i).Dial("tcp", cl.cfg.Addr)
		if err != nil {
			cl.close()
			return err
		}
		cl.conns = append(cl.conns, c)
	}
	return nil
}

func (cl *loadClient) close() {
	for _, c := range cl.conns {
		c.Close()
	}
	cl.conns = nil
}

// run does count operations over all connections, or, with count 0, as
// many as fit in dur.
func (cl *loadClient) run(count int64, dur time.Duration) ClientResult {
	n := cl.cfg.Conns
	if cl.cfg.Kind == KindIdle {
		return ClientResult{}
	}
	start := time.Now()
	limit := dur + 30*time.Second
	if count > 0 {
		limit = 60 * time.Second
	}
	deadline := start.Add(dur)
	hard := start.Add(limit)
	var (
		wg     sync.WaitGroup
		mu     sync.Mutex
		hist   Hist
		ops    atomic.Int64
		errs   atomic.Int64
		errMsg atomic.Value
	)
	for i := 0; i < n; i++ {
		quota := int64(-1)
		if count > 0 {
			quota = count / int64(n)
			if int64(i) < count%int64(n) {
				quota++
			}
			if quota == 0 {
				continue
			}
		}
		w := &worker{cfg: &cl.cfg, idx: i, quota: quota, deadline: deadline, hard: hard}
		if i < len(cl.conns) {
			w.conn = cl.conns[i]
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := w.loop()
			ops.Add(w.ops)
			if err != nil {
				errs.Add(1)
				errMsg.CompareAndSwap(nil, err.Error())
			}
			mu.Lock()
			hist.Merge(&w.hist)
			mu.Unlock()
		}()
	}
	wg.Wait()
	res := ClientResult{Ops: ops.Load(), Elapsed: time.Since(start), P50: hist.Quantile(0.5), P99: hist.Quantile(0.99), Errors: errs.Load()}
	if m, ok := errMsg.Load().(string); ok {
		res.Err = m
	}
	return res
}

// worker drives one connection (or, for KindHTTPClose, one stream of
// connections).
type worker struct {
	cfg      *ClientConfig
	idx      int
	conn     net.Conn
	quota    int64 // operations to do; -1: until deadline
	deadline time.Time
	hard     time.Time
	ops      int64
	hist     Hist
}

func (w *worker) more() bool {
	if w.quota >= 0 {
		return w.ops < w.quota
	}
	return time.Now().Before(w.deadline)
}

func (w *worker) loop() error {
	switch w.cfg.Kind {
	case KindEcho:
		return w.echo()
	case KindHTTP:
		return w.http()
	case KindHTTPClose:
		return w.httpClose()
	}
	return fmt.Errorf("unknown kind %q", w.cfg.Kind)
}

func (w *worker) echo() error {
	w.conn.SetDeadline(w.hard)
	msg := bytes.Repeat([]byte{'x'}, w.cfg.Size)
	buf := make([]byte, w.cfg.Size)
	for w.more() {
		t0 := time.Now()
		if _, err := w.conn.Write(msg); err != nil {
			return err
		}
		if _, err := io.ReadFull(w.conn, buf); err != nil {
			return err
		}
		w.hist.Add(time.Since(t0))
		w.ops++
	}
	return nil
}

const (
	httpRequest      = "GET /hello HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: herdbench\r\nAccept: */*\r\n\r\n"
	httpCloseRequest = "GET /hello HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: herdbench\r\nAccept: */*\r\nConnection: close\r\n\r\n"
)

func (w *worker) http() error {
	w.conn.SetDeadline(w.hard)
	depth := max(w.cfg.Depth, 1)
	batch := bytes.Repeat([]byte(httpRequest), depth)
	rr := newRespReader(w.conn)
	for w.more() {
		k := int64(depth)
		if w.quota >= 0 && w.quota-w.ops < k {
			k = w.quota - w.ops
		}
		t0 := time.Now()
		if _, err := w.conn.Write(batch[:k*int64(len(httpRequest))]); err != nil {
			return err
		}
		for j := int64(0); j < k; j++ {
			if err := rr.next(); err != nil {
				return err
			}
		}
		// Every request of a pipelined batch is counted with the batch's
		// latency: from its write to the last response.
		d := time.Since(t0)
		for j := int64(0); j < k; j++ {
			w.hist.Add(d)
		}
		w.ops += k
	}
	return nil
}

func (w *worker) httpClose() error {
	d := dialer(w.idx)
	var scratch [512]byte
	for w.more() {
		if time.Now().After(w.hard) {
			return errors.New("hard deadline")
		}
		t0 := time.Now()
		ctx, cancel := context.WithDeadline(context.Background(), w.hard)
		c, err := d.DialContext(ctx, "tcp", w.cfg.Addr)
		cancel()
		if err != nil {
			return err
		}
		c.SetDeadline(w.hard)
		if _, err := io.WriteString(c, httpCloseRequest); err != nil {
			c.Close()
			return err
		}
		rr := respReader{r: c, buf: scratch[:0:len(scratch)]}
		if err := rr.next(); err != nil {
			c.Close()
			return err
		}
		// The server closes first: wait for its end of stream, so that
		// TIME_WAIT stays on its side and the client's ports are free.
		if _, err := c.Read(scratch[:1]); err != io.EOF {
			c.Close()
			if err == nil {
				return errors.New("data after a Connection: close response")
			}
			return err
		}
		c.Close()
		w.hist.Add(time.Since(t0))
		w.ops++
	}
	return nil
}

// respReader reads HTTP/1.1 responses with a Content-Length, without
// allocating per response.
type respReader struct {
	r    io.Reader
	buf  []byte
	head int // start of unread data
}

func newRespReader(r io.Reader) *respReader {
	return &respReader{r: r, buf: make([]byte, 0, 64<<10)}
}

var contentLength = []byte("content-length:")

// next consumes one response.
func (rr *respReader) next() error {
	for {
		data := rr.buf[rr.head:]
		if i := bytes.Index(data, crlfcrlf); i >= 0 {
			head := data[:i]
			if !bytes.HasPrefix(head, []byte("HTTP/1.1 200")) {
				return fmt.Errorf("unexpected response %q", head)
			}
			n, err := parseContentLength(head)
			if err != nil {
				return err
			}
			total := i + 4 + n
			if len(data) >= total {
				rr.head += total
				if rr.head == len(rr.buf) {
					rr.buf, rr.head = rr.buf[:0], 0
				}
				return nil
			}
		}
		if err := rr.fill(); err != nil {
			return err
		}
	}
}

func (rr *respReader) fill() error {
	if rr.head > 0 && (len(rr.buf) == cap(rr.buf) || rr.head > cap(rr.buf)/2) {
		rr.buf = rr.buf[:copy(rr.buf, rr.buf[rr.head:])]
		rr.head = 0
	}
	if len(rr.buf) == cap(rr.buf) {
		return errors.New("response too large")
	}
	n, err := rr.r.Read(rr.buf[len(rr.buf):cap(rr.buf)])
	rr.buf = rr.buf[:len(rr.buf)+n]
	if n > 0 {
		return nil
	}
	if err == nil {
		err = io.ErrNoProgress
	}
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return err
}

func parseContentLength(head []byte) (int, error) {
	for len(head) > 0 {
		line := head
		if i := bytes.Index(head, []byte("\r\n")); i >= 0 {
			line, head = head[:i], head[i+2:]
		} else {
			head = nil
		}
		if len(line) > len(contentLength) && bytes.EqualFold(line[:len(contentLength)], contentLength) {
			v := bytes.TrimSpace(line[len(contentLength):])
			n := 0
			for _, c := range v {
				if c < '0' || c > '9' || n > 1<<30 {
					return 0, fmt.Errorf("bad Content-Length %q", v)
				}
				n = n*10 + int(c-'0')
			}
			if len(v) == 0 {
				return 0, errors.New("empty Content-Length")
			}
			return n, nil
		}
	}
	return 0, errors.New("response without Content-Length")
}
