//go:build linux || darwin || freebsd

// Package service speaks to the service manager (systemd's readiness
// protocol) and carries the hooks by which package upgrade takes over
// herd.RunAll's reports, without widening the root's public API.
package service

import (
	"context"
	"net"
	"os"

	"golang.org/x/sys/unix"
)

// Notify tells the service manager about the process's state through the
// datagram socket named by NOTIFY_SOCKET: systemd's readiness protocol
// (sd_notify), which Type=notify units use. It is one datagram on a Unix
// socket, written here rather than taken from a library so that the core
// keeps its single dependency. Without NOTIFY_SOCKET it does nothing.
func Notify(state string) error {
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		return nil
	}
	if path[0] == '@' {
		path = "\x00" + path[1:] // an abstract socket
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return err
	}
	defer c.Close()
	_, err = c.Write([]byte(state))
	return err
}

// MonotonicMicros is CLOCK_MONOTONIC in microseconds, which systemd wants
// with RELOADING=1.
func MonotonicMicros() int64 {
	var ts unix.Timespec
	if unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts) != nil {
		return 0
	}
	return ts.Nano() / 1e3
}

// Hooks replace what RunAll reports by itself. A nil field keeps RunAll's
// own report.
type Hooks struct {
	// Ready is called once every worker is bound and its loops are
	// starting, instead of Notify("READY=1").
	Ready func() error
	// Stopping is called when the graceful stop begins, instead of
	// Notify("STOPPING=1").
	Stopping func() error
}

type hooksKey struct{}

// WithHooks returns ctx carrying h for RunAll.
func WithHooks(ctx context.Context, h Hooks) context.Context {
	return context.WithValue(ctx, hooksKey{}, h)
}

// HooksFrom returns the hooks ctx carries, with RunAll's own reports where
// it carries none.
func HooksFrom(ctx context.Context) Hooks {
	h, _ := ctx.Value(hooksKey{}).(Hooks)
	if h.Ready == nil {
		h.Ready = func() error { return Notify("READY=1") }
	}
	if h.Stopping == nil {
		h.Stopping = func() error { return Notify("STOPPING=1") }
	}
	return h
}
