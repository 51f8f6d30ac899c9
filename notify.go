//go:build linux || darwin || freebsd

package herd

import (
	"net"
	"os"

	"golang.org/x/sys/unix"
)

// notify tells the service manager about the process's state through the
// datagram socket named by NOTIFY_SOCKET: systemd's readiness protocol
// (sd_notify), which Type=notify units use. It is one datagram on a Unix
// socket, written here rather than taken from a library so that the core
// keeps its single dependency. Without NOTIFY_SOCKET it does nothing.
func notify(state string) error {
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

// monotonicMicros is CLOCK_MONOTONIC in microseconds, which systemd wants
// with RELOADING=1.
func monotonicMicros() int64 {
	var ts unix.Timespec
	if unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts) != nil {
		return 0
	}
	return ts.Nano() / 1e3
}
