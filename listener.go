//go:build linux || darwin || freebsd

package herd

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/seed358e4494/herd/protocol"
)

// endpoint is a parsed Worker.Addr.
type endpoint struct {
	network string // "tcp", "udp" or "unix"
	sa      unix.Sockaddr
	domain  int
	path    string // unix socket path, removed on shutdown
	proto   protocol.Protocol
}

// parseAddr reads "scheme://address". The scheme names the transport and,
// for text and frame, the protocol: tcp:// and unix:// carry raw streams
// (or the Worker's Protocol), text:// and frame:// are TCP with that
// protocol. A bare "host:port" is tcp.
func parseAddr(addr string) (endpoint, error) {
	scheme, rest, ok := strings.Cut(addr, "://")
	if !ok {
		scheme, rest = "tcp", addr
	}
	var ep endpoint
	switch scheme {
	case "udp", "udp4", "udp6":
		ua, err := net.ResolveUDPAddr(scheme, rest)
		if err != nil {
			return ep, fmt.Errorf("herd: address %q: %w", addr, err)
		}
		ep, err = inetEndpoint(addr, scheme == "udp6", ua.IP, ua.Port, ua.Zone)
		ep.network = "udp"
		return ep, err
	case "tcp", "tcp4", "tcp6":
	case "text":
		ep.proto = protocol.Text{}
	case "frame":
		ep.proto = protocol.Frame{}
	case "unix":
		if rest == "" {
			return ep, fmt.Errorf("herd: address %q: empty unix socket path", addr)
		}
		ep.network, ep.domain, ep.path = "unix", unix.AF_UNIX, rest
		ep.sa = &unix.SockaddrUnix{Name: rest}
		return ep, nil
	default:
		return ep, fmt.Errorf("herd: address %q: unknown scheme %q (want tcp, text, frame, unix or udp)", addr, scheme)
	}
	network := "tcp"
	if scheme == "tcp4" || scheme == "tcp6" {
		network = scheme
	}
	ta, err := net.ResolveTCPAddr(network, rest)
	if err != nil {
		return ep, fmt.Errorf("herd: address %q: %w", addr, err)
	}
	inet, err := inetEndpoint(addr, network == "tcp6", ta.IP, ta.Port, ta.Zone)
	inet.proto = ep.proto
	inet.network = "tcp"
	return inet, err
}

// inetEndpoint is an IPv4 or IPv6 address to bind; an empty host binds
// every IPv4 address unless v6 is asked.
func inetEndpoint(addr string, v6 bool, ip net.IP, port int, zone string) (endpoint, error) {
	var ep endpoint
	if ip4 := ip.To4(); ip4 != nil || (ip == nil && !v6) {
		sa := &unix.SockaddrInet4{Port: port}
		if ip4 != nil {
			copy(sa.Addr[:], ip4)
		}
		ep.domain, ep.sa = unix.AF_INET, sa
		return ep, nil
	}
	sa := &unix.SockaddrInet6{Port: port}
	copy(sa.Addr[:], ip.To16())
	if zone != "" {
		ifi, err := net.InterfaceByName(zone)
		if err != nil {
			return ep, fmt.Errorf("herd: address %q: zone: %w", addr, err)
		}
		sa.ZoneId = uint32(ifi.Index)
	}
	ep.domain, ep.sa = unix.AF_INET6, sa
	return ep, nil
}

// listen opens a non-blocking listening socket. With reusePort it joins the
// address's SO_REUSEPORT group (SO_REUSEPORT_LB on FreeBSD).
func listen(ep endpoint, reusePort bool) (int, error) {
	sotype := unix.SOCK_STREAM
	if ep.network == "udp" {
		sotype = unix.SOCK_DGRAM
	}
	fd, err := unix.Socket(ep.domain, sotype, 0)
	if err != nil {
		return -1, fmt.Errorf("herd: socket: %w", err)
	}
	unix.CloseOnExec(fd)
	fail := func(what string, err error) (int, error) {
		unix.Close(fd)
		return -1, fmt.Errorf("herd: %s %s: %w", what, sockaddrString(ep.sa), err)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		return fail("set non-blocking", err)
	}
	if ep.network != "unix" {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
			return fail("SO_REUSEADDR", err)
		}
		// As Go's net package does: small messages go out at once. Set
		// on the listener, accepted sockets inherit it (see register).
		if ep.network == "tcp" {
			if err := unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1); err != nil {
				return fail("TCP_NODELAY", err)
			}
		}
		if reusePort {
			if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, soReusePort, 1); err != nil {
				return fail("SO_REUSEPORT", err)
			}
		}
	}
	err = unix.Bind(fd, ep.sa)
	if err == unix.EADDRINUSE && ep.path != "" && staleUnixSocket(ep.path) {
		// A socket file left by a process that died: nobody accepts on
		// it. A live server's file is never touched.
		os.Remove(ep.path)
		err = unix.Bind(fd, ep.sa)
	}
	if err != nil {
		return fail("bind", err)
	}
	if ep.network == "udp" {
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

// probeOwner fails if a socket already listens on ep's TCP port, which a
// ReusePort worker's sockets would otherwise join: a second instance
// started by mistake would take a share of the connections. The probe
// binds a socket with SO_REUSEADDR, as the group's have, but without
// SO_REUSEPORT: the bind fails only where a socket listens (a connection
// left in TIME_WAIT does not count), and the probe is closed unlistened.
func probeOwner(ep endpoint) error {
	port := 0
	switch sa := ep.sa.(type) {
	case *unix.SockaddrInet4:
		port = sa.Port
	case *unix.SockaddrInet6:
		port = sa.Port
	}
	if ep.network != "tcp" || port == 0 {
		return nil // port 0 is a new port; unix sockets have no groups
	}
	fd, err := unix.Socket(ep.domain, unix.SOCK_STREAM, 0)
	if err != nil {
		return fmt.Errorf("herd: socket: %w", err)
	}
	defer unix.Close(fd)
	unix.CloseOnExec(fd)
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
		return fmt.Errorf("herd: SO_REUSEADDR: %w", err)
	}
	if err := unix.Bind(fd, ep.sa); errors.Is(err, unix.EADDRINUSE) {
		return fmt.Errorf("herd: %s: port %d already has a listening socket this worker did not open (another instance of the program?); set Worker.JoinReusePort to share it on purpose: %w",
			sockaddrString(ep.sa), port, err)
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

// boundSockaddr is the address fd is bound to (port 0 resolved).
func boundSockaddr(fd int) (unix.Sockaddr, error) {
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return nil, fmt.Errorf("herd: getsockname: %w", err)
	}
	return sa, nil
}

// peerAddr is a connection's remote address, kept compactly in the Conn and
// turned into a net.Addr only when RemoteAddr asks for it.
type peerAddr struct {
	kind peerKind
	port uint16
	zone uint32 // IPv6 scope (interface index)
	ip   [16]byte
	name string // unix socket path
}

type peerKind uint8

const (
	peerNone peerKind = iota
	peerInet4
	peerInet6
	peerUnix
)

// peerFromSockaddr converts an address from unix.Accept.
func peerFromSockaddr(sa unix.Sockaddr) peerAddr {
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		p := peerAddr{kind: peerInet4, port: uint16(a.Port)}
		copy(p.ip[:], a.Addr[:])
		return p
	case *unix.SockaddrInet6:
		return peerAddr{kind: peerInet6, port: uint16(a.Port), zone: a.ZoneId, ip: a.Addr}
	case *unix.SockaddrUnix:
		return peerAddr{kind: peerUnix, name: a.Name}
	}
	return peerAddr{}
}

// netAddr converts the address for the API (nil if unknown).
func (p *peerAddr) netAddr() net.Addr {
	switch p.kind {
	case peerInet4:
		return netAddr(&unix.SockaddrInet4{Port: int(p.port), Addr: [4]byte(p.ip[:4])})
	case peerInet6:
		return netAddr(&unix.SockaddrInet6{Port: int(p.port), ZoneId: p.zone, Addr: p.ip})
	case peerUnix:
		return netAddr(&unix.SockaddrUnix{Name: p.name})
	}
	return nil
}

// netAddr converts a socket address for the API.
func netAddr(sa unix.Sockaddr) net.Addr {
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return &net.TCPAddr{IP: net.IP(append([]byte(nil), a.Addr[:]...)), Port: a.Port}
	case *unix.SockaddrInet6:
		zone := ""
		if a.ZoneId != 0 {
			if ifi, err := net.InterfaceByIndex(int(a.ZoneId)); err == nil {
				zone = ifi.Name
			}
		}
		return &net.TCPAddr{IP: net.IP(append([]byte(nil), a.Addr[:]...)), Port: a.Port, Zone: zone}
	case *unix.SockaddrUnix:
		return &net.UnixAddr{Name: a.Name, Net: "unix"}
	}
	return nil
}

func sockaddrString(sa unix.Sockaddr) string {
	if a := netAddr(sa); a != nil {
		return a.String()
	}
	return "?"
}
