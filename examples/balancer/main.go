//go:build linux || darwin || freebsd

// Command balancer is a TCP load balancer on herd's balancer package: each
// connection it accepts is forwarded to one of its backends, on the
// accepting loop, with backpressure both ways.
//
//	go run ./examples/balancer -listen 127.0.0.1:8000 \
//		-backend 127.0.0.1:9001 -backend 127.0.0.1:9002,weight=3 \
//		-algorithm weighted -check-interval 2s
//	go run ./examples/balancer -config balancer.json
//
// The config file is JSON with the flags' names (see config); flags given
// on the command line override it. The first line of output is the bound
// address and the process ID. SIGUSR1 prints the per-backend table, as
// the end of a run does; SIGINT or SIGTERM stops it gracefully.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/seed358e4494/herd"
	"github.com/seed358e4494/herd/balancer"
)

func main() {
	if err := run(context.Background(), os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "balancer:", err)
		os.Exit(1)
	}
}

// config is the balancer's settings, as flags or a JSON file.
type config struct {
	Listen         string             `json:"listen"`
	Count          int                `json:"count"`
	ReusePort      bool               `json:"reuseport"`
	Algorithm      string             `json:"algorithm"`
	Backends       []balancer.Backend `json:"backends"`
	ConnectTimeout duration           `json:"connect_timeout"`
	IdleTimeout    duration           `json:"idle_timeout"`
	Retries        int                `json:"retries"`
	CheckInterval  duration           `json:"check_interval"`
	CheckHTTP      string             `json:"check_http"`
	Rise           int                `json:"rise"`
	Fall           int                `json:"fall"`
	SlowStart      duration           `json:"slow_start"`
	ProxyProtocol  int                `json:"proxy_protocol"`
	Splice         bool               `json:"splice"`
}

// duration is a time.Duration written as "2s" in JSON.
type duration time.Duration

func (d *duration) UnmarshalJSON(b []byte) error {
	s, err := strconv.Unquote(string(b))
	if err != nil {
		return fmt.Errorf("duration %s: want a string such as \"2s\"", b)
	}
	v, err := time.ParseDuration(s)
	*d = duration(v)
	return err
}

// backendFlag collects -backend addr[,weight=N].
type backendFlag struct{ list *[]balancer.Backend }

func (f backendFlag) String() string { return "" }

func (f backendFlag) Set(v string) error {
	addr, opts, _ := strings.Cut(v, ",")
	be := balancer.Backend{Addr: addr}
	if opts != "" {
		w, ok := strings.CutPrefix(opts, "weight=")
		n, err := strconv.Atoi(w)
		if !ok || err != nil {
			return fmt.Errorf("%q: want addr or addr,weight=N", v)
		}
		be.Weight = n
	}
	*f.list = append(*f.list, be)
	return nil
}

func parse(args []string, stderr io.Writer) (config, error) {
	var cfg config
	fs := flag.NewFlagSet("balancer", flag.ContinueOnError)
	fs.SetOutput(stderr)
	file := fs.String("config", "", "JSON config file (flags override it)")
	var flagged config
	fs.StringVar(&flagged.Listen, "listen", "127.0.0.1:8000", "listen address")
	fs.IntVar(&flagged.Count, "count", 0, "event loops; 0 means one per CPU")
	fs.BoolVar(&flagged.ReusePort, "reuseport", true, "a SO_REUSEPORT listener per loop")
	fs.StringVar(&flagged.Algorithm, "algorithm", "roundrobin", "random, roundrobin, weighted, leastconn, source or p2c")
	fs.Var(backendFlag{&flagged.Backends}, "backend", "a backend, addr or addr,weight=N (repeat the flag)")
	fs.Func("connect-timeout", "connect timeout (default 5s)", durationFlag(&flagged.ConnectTimeout))
	fs.Func("idle-timeout", "close a proxied connection idle this long (0: never)", durationFlag(&flagged.IdleTimeout))
	fs.IntVar(&flagged.Retries, "retries", 0, "other backends to try after a failed connect (0: 2)")
	fs.Func("check-interval", "active health check interval (0: none)", durationFlag(&flagged.CheckInterval))
	fs.StringVar(&flagged.CheckHTTP, "check-http", "", "health check path (HTTP GET); empty: TCP connect")
	fs.IntVar(&flagged.Rise, "rise", 0, "checks in a row to mark a backend up (0: 2)")
	fs.IntVar(&flagged.Fall, "fall", 0, "failures in a row to mark it down (0: 3)")
	fs.Func("slow-start", "time a backend back up takes to reach its weight", durationFlag(&flagged.SlowStart))
	fs.IntVar(&flagged.ProxyProtocol, "proxy-protocol", 0, "send a PROXY protocol header of this version (1 or 2)")
	fs.BoolVar(&flagged.Splice, "splice", false, "forward with splice(2), without copying (Linux)")
	if err := fs.Parse(args); err != nil {
		return cfg, err
	}
	if *file != "" {
		b, err := os.ReadFile(*file)
		if err != nil {
			return cfg, err
		}
		if err := json.Unmarshal(b, &cfg); err != nil {
			return cfg, fmt.Errorf("%s: %w", *file, err)
		}
	}
	// Flags given on the command line win; the others keep the file's
	// values, or take the flags' defaults.
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	set := func(name string, apply func()) {
		if given[name] || *file == "" {
			apply()
		}
	}
	set("listen", func() { cfg.Listen = flagged.Listen })
	set("count", func() { cfg.Count = flagged.Count })
	set("reuseport", func() { cfg.ReusePort = flagged.ReusePort })
	set("algorithm", func() { cfg.Algorithm = flagged.Algorithm })
	set("backend", func() { cfg.Backends = flagged.Backends })
	set("connect-timeout", func() { cfg.ConnectTimeout = flagged.ConnectTimeout })
	set("idle-timeout", func() { cfg.IdleTimeout = flagged.IdleTimeout })
	set("retries", func() { cfg.Retries = flagged.Retries })
	set("check-interval", func() { cfg.CheckInterval = flagged.CheckInterval })
	set("check-http", func() { cfg.CheckHTTP = flagged.CheckHTTP })
	set("rise", func() { cfg.Rise = flagged.Rise })
	set("fall", func() { cfg.Fall = flagged.Fall })
	set("slow-start", func() { cfg.SlowStart = flagged.SlowStart })
	set("proxy-protocol", func() { cfg.ProxyProtocol = flagged.ProxyProtocol })
	set("splice", func() { cfg.Splice = flagged.Splice })
	if len(cfg.Backends) == 0 {
		return cfg, errors.New("no backends: give -backend (or backends in -config)")
	}
	return cfg, nil
}

func durationFlag(d *duration) func(string) error {
	return func(s string) error {
		v, err := time.ParseDuration(s)
		*d = duration(v)
		return err
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg, err := parse(args, stderr)
	if err != nil {
		return err
	}
	logger := slog.New(slog.NewTextHandler(stderr, nil))
	b := &balancer.Balancer{
		Backends:       cfg.Backends,
		Algorithm:      balancer.Algorithm(cfg.Algorithm),
		ConnectTimeout: time.Duration(cfg.ConnectTimeout),
		Retries:        cfg.Retries,
		Health: balancer.HealthCheck{
			Interval: time.Duration(cfg.CheckInterval),
			HTTPPath: cfg.CheckHTTP,
			Rise:     cfg.Rise,
			Fall:     cfg.Fall,
		},
		SlowStart:     time.Duration(cfg.SlowStart),
		ProxyProtocol: cfg.ProxyProtocol,
		Splice:        cfg.Splice,
		Logger:        logger,
	}
	w := &herd.Worker{Name: "balancer", Addr: cfg.Listen, Count: cfg.Count, ReusePort: cfg.ReusePort,
		IdleTimeout: time.Duration(cfg.IdleTimeout), MaxSendBufferSize: 1 << 20, Logger: logger}
	if err := b.Attach(w); err != nil {
		return err
	}
	if err := w.Listen(); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "balancer: listening on %s pid %d\n", w.ListenAddr(), os.Getpid())
	usr1 := make(chan os.Signal, 1)
	signal.Notify(usr1, syscall.SIGUSR1)
	defer signal.Stop(usr1)
	go func() {
		for range usr1 {
			printTable(stdout, b.Stats())
		}
	}()
	err = herd.RunAll(ctx, w)
	printTable(stdout, b.Stats())
	return err
}

// printTable writes the per-backend figures.
func printTable(out io.Writer, s balancer.Stats) {
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "backend\tstate\tweight\tactive\ttotal\tbytes-in\tbytes-out\tconnect-errors\tchecks-failed\tdown\t")
	for _, be := range s.Backends {
		fmt.Fprintf(tw, "%s\t%s\t%g/%d\t%d\t%d\t%d\t%d\t%d\t%d\t%s\t\n", be.Addr, be.State, be.EffectiveWeight, be.Weight,
			be.Active, be.Total, be.BytesIn, be.BytesOut, be.ConnectErrors, be.ChecksFailed, be.DownTime.Round(time.Millisecond))
	}
	tw.Flush()
	fmt.Fprintf(out, "clients closed with no backend: %d; for want of local resources: %d\n", s.NoBackend, s.LocalErrors)
}
