//go:build linux || darwin || freebsd

// Command udp is a UDP echo server on herd: each datagram goes back to its
// sender. On Linux every loop has its own socket in a SO_REUSEPORT group,
// and the kernel picks a datagram's loop by hashing its addresses.
//
//	go run ./examples/udp -addr udp://127.0.0.1:9001
//	echo hello | nc -u -w1 127.0.0.1 9001
//
// The first line of output is the bound address and the process ID;
// SIGUSR1 prints the per-loop table, SIGINT or SIGTERM stops it.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/seed358e4494/herd"
)

func main() {
	if err := run(context.Background(), os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "udp:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("udp", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", "udp://127.0.0.1:9001", "listen address")
	count := fs.Int("count", 0, "event loops; 0 means one per CPU")
	if err := fs.Parse(args); err != nil {
		return err
	}
	w := &herd.Worker{Name: "udp", Addr: *addr, Count: *count, Logger: slog.New(slog.NewTextHandler(stderr, nil)),
		OnPacket: func(p *herd.Packet, msg []byte) { p.Reply(msg) }}
	if err := w.Listen(); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "udp: listening on %s pid %d\n", w.ListenAddr(), os.Getpid())
	usr1 := make(chan os.Signal, 1)
	signal.Notify(usr1, syscall.SIGUSR1)
	defer signal.Stop(usr1)
	go func() {
		for range usr1 {
			fmt.Fprint(stdout, w.Stats())
		}
	}()
	return herd.RunAll(ctx, w)
}
