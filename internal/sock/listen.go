//go:build linux || darwin || freebsd

package sock

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// A Bind is what Listen binds.
type Bind struct {
	Network string // "tcp", "udp" or "unix"
	Domain  int
	SA      unix.Sockaddr
	Path    string // a unix socket's file, which a process that died may have left
}

// Listen opens a non-blocking, close-on-exec listening socket (a bound
// datagram socket for udp). With reusePort it joins the address's
// SO_REUSEPORT group (SO_REUSEPORT_LB on FreeBSD).
func Listen(ep Bind, reusePort bool) (int, error) {
	sotype := unix.SOCK_STREAM
	if ep.Network == "udp" {
		sotype = unix.SOCK_DGRAM
	}
	fd, err := unix.Socket(ep.Domain, sotype, 0)
	if err != nil {
		return -1, fmt.Errorf("herd: socket: %w", err)
	}
	unix.CloseOnExec(fd)
	fail := func(what string, err error) (int, error) {
		Close(fd)
		return -1, fmt.Errorf("herd: %s %s: %w", what, String(ep.SA), err)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		return fail("set non-blocking", err)
	}
	if ep.Network != "unix" {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
			return fail("SO_REUSEADDR", err)
		}
		// As Go's net package does: small messages go out at once. Set
		// on the listener, accepted sockets inherit it (see register).
		if ep.Network == "tcp" {
			if err := unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1); err != nil {
				return fail("TCP_NODELAY", err)
			}
		}
		if reusePort {
			if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, ReusePort, 1); err != nil {
				return fail("SO_REUSEPORT", err)
			}
		}
	}
	err = unix.Bind(fd, ep.SA)
	if err == unix.EADDRINUSE && ep.Path != "" && staleUnixSocket(ep.Path) {
		// A socket file left by a process that died: nobody accepts on
		// it. A live server's file is never touched.
		os.Remove(ep.Path)
		err = unix.Bind(fd, ep.SA)
	}
	if err != nil {
		return fail("bind", err)
	}
	if ep.Network == "udp" {
		// A burst waits in the socket rather than being dropped: ask for
		// 4 MiB (the kernel grants up to net.core.rmem_max).
		unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 4<<20)
		return fd, nil
	}
	if err := unix.Listen(fd, listenBacklog()); err != nil {
		return fail("listen", err)
	}
	return fd, nil
}

// ProbeOwner fails if a socket already listens on ep's TCP port, which a
// ReusePort worker's sockets would otherwise join: a second instance
// started by mistake would take a share of the connections. The probe
// binds a socket with SO_REUSEADDR, as the group's have, but without
// SO_REUSEPORT: the bind fails only where a socket listens (a connection
// left in TIME_WAIT does not count), and the probe is closed unlistened.
func ProbeOwner(ep Bind) error {
	port := 0
	switch sa := ep.SA.(type) {
	case *unix.SockaddrInet4:
		port = sa.Port
	case *unix.SockaddrInet6:
		port = sa.Port
	}
	if ep.Network != "tcp" || port == 0 {
		return nil // port 0 is a new port; unix sockets have no groups
	}
	fd, err := unix.Socket(ep.Domain, unix.SOCK_STREAM, 0)
	if err != nil {
		return fmt.Errorf("herd: socket: %w", err)
	}
	defer Close(fd)
	unix.CloseOnExec(fd)
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
		return fmt.Errorf("herd: SO_REUSEADDR: %w", err)
	}
	if err := unix.Bind(fd, ep.SA); errors.Is(err, unix.EADDRINUSE) {
		return fmt.Errorf("herd: %s: port %d already has a listening socket this worker did not open (another instance of the program?); set Worker.JoinReusePort to share it on purpose: %w",
			String(ep.SA), port, err)
	}
	return nil // any other error, the real bind reports
}

// staleUnixSocket reports whether path is a socket file nobody listens on.
func staleUnixSocket(path string) bool {
	fi, err := os.Lstat(path)
	if err != nil || fi.Mode()&os.ModeSocket == 0 {
		return false
	}
	c, err := net.Dial("unix", path)
	if err == nil {
		c.Close()
		return false
	}
	return errors.Is(err, unix.ECONNREFUSED)
}

// listenBacklog is the kernel's somaxconn where it can be read: the value
// net.Listen uses too.
func listenBacklog() int {
	b, err := os.ReadFile("/proc/sys/net/core/somaxconn")
	if err == nil {
		if n, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && n > 0 {
			return n
		}
	}
	return unix.SOMAXCONN
}
