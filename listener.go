//go:build linux || darwin || freebsd

package herd

import (
	"fmt"
	"net"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/seed358e4494/herd/internal/sock"
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

// bind is what sock.Listen binds for ep.
func (ep endpoint) bind() sock.Bind {
	return sock.Bind{Network: ep.network, Domain: ep.domain, SA: ep.sa, Path: ep.path}
}
