//go:build linux || darwin || freebsd

// Command echo is herd's echo server: every message it receives goes back to
// its sender.
//
// Run it and talk to it:
//
//	go run ./examples/echo -addr text://127.0.0.1:9000 -count 4 -mode reuseport
//	go run ./examples/echo -dial 127.0.0.1:9000   # in another terminal: type lines; each comes back
//
// (-dial is a minimal client, for machines without nc or telnet: it sends
// what you type and prints what comes back.)
//
// The address scheme picks the protocol: tcp:// echoes raw reads, text://
// echoes lines, frame:// echoes Workerman frames (4-byte big-endian total
// length, then the payload), unix:///path/to.sock listens on a Unix socket
// (raw unless -proto says otherwise). Port 0 picks a free port; the bound
// address is printed on the first line of output.
//
// -mode chooses how connections reach the loops: reuseport (each loop its
// own SO_REUSEPORT listener, the kernel spreads connections; falls back to
// shared accept where the kernel does not balance), shared (one listener
// every loop watches), roundrobin or leastconns (shared, and a loop ahead
// of the others stops watching until they catch up).
//
// Send SIGUSR1 to print the per-loop stats table (connections, messages,
// bytes and wake-ups per loop, and a fairness index) without stopping; the
// second line of output gives the command with the server's PID (under go
// run, $! is the go tool's PID, not the server's):
//
//	kill -USR1 <pid>
//
// SIGINT or SIGTERM stops the server gracefully (a second one at once); the
// stats table is printed once more on the way out.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"

	"github.com/seed358e4494/herd"
	"github.com/seed358e4494/herd/protocol"
)

func main() {
	if len(os.Args) == 3 && (os.Args[1] == "-dial" || os.Args[1] == "--dial") {
		if err := dial(os.Args[2], os.Stdin, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "echo:", err)
			os.Exit(1)
		}
		return
	}
	err := run(context.Background(), os.Args[1:], os.Stdout, os.Stderr)
	switch {
	case err == nil:
	case errors.Is(err, flag.ErrHelp):
		// -h: the usage has been printed.
	case errors.As(err, new(usageError)):
		fmt.Fprintln(os.Stderr, "echo:", err)
		os.Exit(2)
	default:
		fmt.Fprintln(os.Stderr, "echo:", err)
		os.Exit(1)
	}
}

// usageError is a bad command line.
type usageError struct{ error }

// run is the whole program: it parses args, serves until ctx ends or the
// process gets SIGINT or SIGTERM, and writes the bound address and the stats
// to stdout, logs to stderr.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	logger := slog.New(slog.NewTextHandler(stderr, nil))
	w, err := newWorker(args, stderr)
	if err != nil {
		return err
	}
	w.Logger = logger
	w.OnMessage = func(c *herd.Conn, msg []byte) { c.Send(msg) }
	w.OnError = func(c *herd.Conn, err error) {
		logger.Warn("connection error", "conn", c.ID(), "remote", c.RemoteAddr(), "err", err)
	}

	// stdout is shared by the SIGUSR1 handler and the final table.
	var mu sync.Mutex
	printStats := func() {
		mu.Lock()
		defer mu.Unlock()
		fmt.Fprint(stdout, w.Stats())
	}

	// Bind first so that the address (port 0 resolved) can be shown
	// before serving; RunAll then serves the bound listeners.
	if err := w.Listen(); err != nil {
		return err
	}
	usr1 := make(chan os.Signal, 1)
	signal.Notify(usr1, syscall.SIGUSR1)
	defer signal.Stop(usr1)
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-usr1:
				printStats()
			case <-done:
				return
			}
		}
	}()

	mu.Lock()
	fmt.Fprintf(stdout, "echo: listening on %s\n", listenURL(w))
	fmt.Fprintf(stdout, "echo: pid %d; per-loop table: kill -USR1 %d\n", os.Getpid(), os.Getpid())
	mu.Unlock()
	err = herd.RunAll(ctx, w)
	close(done)
	wg.Wait()
	printStats()
	return err
}

// newWorker builds the Worker the command line describes.
func newWorker(args []string, stderr io.Writer) (*herd.Worker, error) {
	fs := flag.NewFlagSet("echo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", "tcp://127.0.0.1:9000", "listen address: tcp://host:port (raw), text://host:port, frame://host:port or unix:///path")
	count := fs.Int("count", 0, "event loops; 0 means one per CPU")
	mode := fs.String("mode", "reuseport", "how connections reach loops: reuseport, shared, roundrobin or leastconns")
	proto := fs.String("proto", "", "protocol for a tcp:// or unix:// address: raw, text or frame (text:// and frame:// name their own)")
	maxConns := fs.Int("max-conns", 0, "most open connections over all loops; 0 means no limit")
	lock := fs.Bool("lock", false, "lock each loop to an OS thread (the stats' switches column counts its sleeps)")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: echo [flags]\n\nAn echo server on herd. SIGUSR1 prints per-loop stats.\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, err
		}
		return nil, usageError{err}
	}
	if fs.NArg() > 0 {
		return nil, usageError{fmt.Errorf("unexpected arguments %q", fs.Args())}
	}

	w := &herd.Worker{Name: "echo", Addr: *addr, Count: *count, MaxConns: *maxConns, LockOSThread: *lock}
	switch *mode {
	case "reuseport":
		w.ReusePort = true // Accept stays AcceptShared: the fallback
	case "shared":
		w.Accept = herd.AcceptShared
	case "roundrobin":
		w.Accept = herd.AcceptRoundRobin
	case "leastconns":
		w.Accept = herd.AcceptLeastConns
	default:
		return nil, usageError{fmt.Errorf("-mode %q: want reuseport, shared, roundrobin or leastconns", *mode)}
	}

	if *proto != "" {
		var p protocol.Protocol
		switch *proto {
		case "raw":
		case "text":
			p = protocol.Text{}
		case "frame":
			p = protocol.Frame{}
		default:
			return nil, usageError{fmt.Errorf("-proto %q: want raw, text or frame", *proto)}
		}
		switch scheme := addrScheme(*addr); scheme {
		case "tcp", "tcp4", "tcp6", "unix":
			w.Protocol = p
		case *proto:
			// text:// with -proto text: already so.
		default:
			return nil, usageError{fmt.Errorf("-proto %s conflicts with the %s:// address", *proto, scheme)}
		}
	}
	return w, nil
}

// addrScheme is the scheme of a Worker address; a bare host:port is tcp.
func addrScheme(addr string) string {
	if scheme, _, ok := strings.Cut(addr, "://"); ok {
		return scheme
	}
	return "tcp"
}

// listenURL is the bound address in the -addr form, to paste back into
// -addr or hand to a client.
func listenURL(w *herd.Worker) string {
	a := w.ListenAddr()
	if a == nil {
		return w.Addr
	}
	return addrScheme(w.Addr) + "://" + a.String()
}

// dial is the -dial client: it connects to addr (host:port, or a Unix
// socket path), sends what in gives, and copies what comes back to out
// until the server closes or in ends (then it half-closes and waits for
// the rest of the answers).
func dial(addr string, in io.Reader, out io.Writer) error {
	network := "tcp"
	if strings.HasPrefix(addr, "/") {
		network = "unix"
	}
	c, err := net.Dial(network, addr)
	if err != nil {
		return err
	}
	defer c.Close()
	go func() {
		io.Copy(c, in)
		if cw, ok := c.(interface{ CloseWrite() error }); ok {
			cw.CloseWrite()
		}
	}()
	_, err = io.Copy(out, c)
	return err
}
