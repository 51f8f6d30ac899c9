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
// the end of a run does.
//
// SIGTERM (or SIGINT) stops it softly, as HAProxy's soft stop: it accepts
// no more, lets the proxied connections finish, for up to -stop-timeout,
// then resets what is left (a reset, so that no client takes a cut stream
// for a whole one); a second signal resets them at once. A client whose
// backend is still connecting when the stop begins is in flight too: it is
// served once the connect completes, or reset at the end. SIGHUP upgrades
// it: the executable starts again and takes over the listening socket,
// and this process serves its connections for -upgrade-grace, then stops
// softly as on SIGTERM.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"reflect"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/seed358e4494/herd"
	"github.com/seed358e4494/herd/balancer"
	"github.com/seed358e4494/herd/upgrade"
)

func main() {
	if err := run(context.Background(), os.Args[1:], os.Stdout, os.Stderr); err != nil {
		msg := err.Error()
		if !strings.HasPrefix(msg, "balancer: ") { // the package's errors say it already
			msg = "balancer: " + msg
		}
		fmt.Fprintln(os.Stderr, msg)
		os.Exit(1)
	}
}

// config is the balancer's settings, as flags or a JSON file. The file's
// keys are the flags' names, but for "backends", a list of {"addr":
// "host:port", "weight": N} objects (the -backend flag repeated); a key
// that is not one of them is an error, and a key the file leaves out
// keeps the flag's default.
type config struct {
	Listen         string             `json:"listen"`
	Count          int                `json:"count"`
	ReusePort      bool               `json:"reuseport"`
	Algorithm      string             `json:"algorithm"`
	Backends       []balancer.Backend `json:"backends"`
	ResolveLater   bool               `json:"resolve-later"`
	ConnectTimeout duration           `json:"connect-timeout"`
	IdleTimeout    duration           `json:"idle-timeout"`
	StopTimeout    duration           `json:"stop-timeout"`
	UpgradeGrace   duration           `json:"upgrade-grace"`
	Retries        int                `json:"retries"`
	CheckInterval  duration           `json:"check-interval"`
	CheckHTTP      string             `json:"check-http"`
	Rise           int                `json:"rise"`
	Fall           int                `json:"fall"`
	SlowStart      duration           `json:"slow-start"`
	ProxyProtocol  int                `json:"proxy-protocol"`
	Splice         bool               `json:"splice"`
}

// defaults are the settings nobody gave: the flags' defaults, and the
// config file's.
func defaults() config {
	return config{Listen: "127.0.0.1:8000", ReusePort: true, Algorithm: string(balancer.RoundRobin),
		StopTimeout: duration(30 * time.Second)}
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
	def := defaults()
	fs := flag.NewFlagSet("balancer", flag.ContinueOnError)
	fs.SetOutput(stderr)
	file := fs.String("config", "", "JSON config file, keys as the flags' names (flags override it)")
	var flagged config
	fs.StringVar(&flagged.Listen, "listen", def.Listen, "listen address")
	fs.IntVar(&flagged.Count, "count", def.Count, "event loops; 0 means one per CPU")
	fs.BoolVar(&flagged.ReusePort, "reuseport", def.ReusePort, "a SO_REUSEPORT listener per loop")
	fs.StringVar(&flagged.Algorithm, "algorithm", def.Algorithm, "random, round-robin, weighted, least-conns, source or p2c (HAProxy's roundrobin and leastconn too)")
	fs.Var(backendFlag{&flagged.Backends}, "backend", "a backend, addr or addr,weight=N (repeat the flag)")
	fs.BoolVar(&flagged.ResolveLater, "resolve-later", def.ResolveLater, "start even if a backend's name does not resolve")
	fs.Func("connect-timeout", "connect timeout (default 5s)", durationFlag(&flagged.ConnectTimeout))
	fs.Func("idle-timeout", "reset a proxied connection idle this long (0: never)", durationFlag(&flagged.IdleTimeout))
	flagged.StopTimeout = def.StopTimeout
	fs.Func("stop-timeout", "on SIGTERM, how long proxied connections may go on before they are reset (default 30s)", durationFlag(&flagged.StopTimeout))
	fs.Func("upgrade-grace", "on SIGHUP, how long this process serves its connections once the new one took over, before it stops", durationFlag(&flagged.UpgradeGrace))
	fs.IntVar(&flagged.Retries, "retries", def.Retries, "other backends to try after a failed connect (0: 2)")
	fs.Func("check-interval", "active health check interval (0: none)", durationFlag(&flagged.CheckInterval))
	fs.StringVar(&flagged.CheckHTTP, "check-http", def.CheckHTTP, "health check path (HTTP GET); empty: TCP connect")
	fs.IntVar(&flagged.Rise, "rise", def.Rise, "checks in a row to mark a backend up (0: 2)")
	fs.IntVar(&flagged.Fall, "fall", def.Fall, "failures in a row to mark it down (0: 3)")
	fs.Func("slow-start", "time a backend back up takes to reach its weight", durationFlag(&flagged.SlowStart))
	fs.IntVar(&flagged.ProxyProtocol, "proxy-protocol", def.ProxyProtocol, "send a PROXY protocol header of this version (1 or 2)")
	fs.BoolVar(&flagged.Splice, "splice", def.Splice, "forward with splice(2), without copying (Linux)")
	if err := fs.Parse(args); err != nil {
		return config{}, err
	}
	if fs.NArg() > 0 {
		return config{}, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if *file == "" {
		return flagged, checkConfig(flagged)
	}
	cfg := def
	if err := readConfig(*file, &cfg); err != nil {
		return config{}, err
	}
	// Flags given on the command line win over the file.
	fs.Visit(func(f *flag.Flag) {
		switch f.Name {
		case "listen":
			cfg.Listen = flagged.Listen
		case "count":
			cfg.Count = flagged.Count
		case "reuseport":
			cfg.ReusePort = flagged.ReusePort
		case "algorithm":
			cfg.Algorithm = flagged.Algorithm
		case "backend":
			cfg.Backends = flagged.Backends
		case "resolve-later":
			cfg.ResolveLater = flagged.ResolveLater
		case "connect-timeout":
			cfg.ConnectTimeout = flagged.ConnectTimeout
		case "idle-timeout":
			cfg.IdleTimeout = flagged.IdleTimeout
		case "stop-timeout":
			cfg.StopTimeout = flagged.StopTimeout
		case "upgrade-grace":
			cfg.UpgradeGrace = flagged.UpgradeGrace
		case "retries":
			cfg.Retries = flagged.Retries
		case "check-interval":
			cfg.CheckInterval = flagged.CheckInterval
		case "check-http":
			cfg.CheckHTTP = flagged.CheckHTTP
		case "rise":
			cfg.Rise = flagged.Rise
		case "fall":
			cfg.Fall = flagged.Fall
		case "slow-start":
			cfg.SlowStart = flagged.SlowStart
		case "proxy-protocol":
			cfg.ProxyProtocol = flagged.ProxyProtocol
		case "splice":
			cfg.Splice = flagged.Splice
		}
	})
	return cfg, checkConfig(cfg)
}

// readConfig reads a JSON config file over cfg: a key that is not a
// setting's is an error naming it (a typo, or another spelling, would
// otherwise leave the setting at its default without a word).
func readConfig(path string, cfg *config) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	data, err := io.ReadAll(f)
	if err != nil {
		return err
	}
	// encoding/json matches keys without regard to case and lets a
	// repeated key win silently: the keys are checked as written first.
	if err := checkKeys(json.NewDecoder(bytes.NewReader(data)), configKeys, backendKeys, func() any { return new(config) }); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(cfg); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return fmt.Errorf("%s: more after the JSON object", path)
	}
	return nil
}

// The keys a config file may hold, as written: the top level's (config's
// json tags) and a backend's.
var (
	configKeys  = jsonKeys(reflect.TypeFor[config]())
	backendKeys = map[string]bool{"addr": true, "weight": true}
)

func jsonKeys(t reflect.Type) map[string]bool {
	keys := map[string]bool{}
	for i := range t.NumField() {
		keys[strings.Split(t.Field(i).Tag.Get("json"), ",")[0]] = true
	}
	return keys
}

// checkKeys reads the config's JSON object and refuses a key not written
// exactly as one of keys (the backends' objects against backendKeys), or
// written twice, or whose value target (a new config or Backend) refuses,
// naming it. Other errors are left to the decoding.
func checkKeys(dec *json.Decoder, keys, backendKeys map[string]bool, target func() any) error {
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return nil
	}
	seen := map[string]bool{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil
		}
		key, _ := tok.(string)
		switch {
		case seen[key]:
			return fmt.Errorf("key %q given twice", key)
		case !keys[key]:
			return fmt.Errorf("json: unknown field %q", key)
		}
		seen[key] = true
		if key != "backends" {
			var value json.RawMessage
			if dec.Decode(&value) != nil {
				return nil
			}
			// The value alone, so that an error can name its key.
			alone := fmt.Appendf(nil, "{%q:%s}", key, value)
			if err := json.Unmarshal(alone, target()); err != nil {
				return fmt.Errorf("%s: %w", key, err)
			}
			continue
		}
		var list []json.RawMessage
		if dec.Decode(&list) != nil {
			return nil
		}
		for _, b := range list {
			if err := checkKeys(json.NewDecoder(bytes.NewReader(b)), backendKeys, nil, func() any { return new(balancer.Backend) }); err != nil {
				return fmt.Errorf("backends: %w", err)
			}
		}
	}
	return nil
}

func checkConfig(cfg config) error {
	if len(cfg.Backends) == 0 {
		return errors.New("no backends: give -backend (or backends in -config)")
	}
	for _, d := range []struct {
		name string
		d    duration
	}{{"connect-timeout", cfg.ConnectTimeout}, {"idle-timeout", cfg.IdleTimeout}, {"stop-timeout", cfg.StopTimeout},
		{"upgrade-grace", cfg.UpgradeGrace}, {"check-interval", cfg.CheckInterval}, {"slow-start", cfg.SlowStart}} {
		if d.d < 0 {
			return fmt.Errorf("%s %v: must not be negative", d.name, time.Duration(d.d))
		}
	}
	for _, n := range []struct {
		name string
		n    int
	}{{"count", cfg.Count}, {"retries", cfg.Retries}, {"rise", cfg.Rise}, {"fall", cfg.Fall}} {
		if n.n < 0 {
			return fmt.Errorf("%s %d: must not be negative", n.name, n.n)
		}
	}
	return nil
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
		ResolveLater:   cfg.ResolveLater,
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
		IdleTimeout: time.Duration(cfg.IdleTimeout), StopTimeout: time.Duration(cfg.StopTimeout), MaxSendBufferSize: 1 << 20, Logger: logger}
	if err := b.Attach(w); err != nil {
		return err
	}
	p := &upgrade.Process{Workers: []*herd.Worker{w}, UpgradeGrace: time.Duration(cfg.UpgradeGrace)}
	if err := p.Listen(); err != nil { // takes the sockets of an upgrade's old process
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
	err = p.Run(ctx)
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
