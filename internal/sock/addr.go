//go:build linux || darwin || freebsd

package sock

import (
	"fmt"
	"net"

	"golang.org/x/sys/unix"
)

// Bound is the address fd is bound to (port 0 resolved).
func Bound(fd int) (unix.Sockaddr, error) {
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return nil, fmt.Errorf("herd: getsockname: %w", err)
	}
	return sa, nil
}

// Peer is a connection's remote address, kept compactly and turned into a
// net.Addr only when asked for it.
type Peer struct {
	Addr
	name string // unix socket path
}

// Addr is a Peer without a unix socket's name (24 bytes): what a
// connection keeps, the name being rare (an unnamed client's reads "@").
type Addr struct {
	kind PeerKind
	port uint16
	zone uint32 // IPv6 scope (interface index)
	ip   [16]byte
}

// Split returns p's address and, for a named unix peer, its name ("" for
// an unnamed one, which reads as "@").
func (p *Peer) Split() (Addr, string) {
	if p.name == "@" {
		return p.Addr, ""
	}
	return p.Addr, p.name
}

// NetAddr converts the address for the API (nil if unknown), with name as
// a unix peer's ("" for an unnamed one).
func (a *Addr) NetAddr(name string) net.Addr {
	if a.kind == PeerUnix && name == "" {
		name = "@"
	}
	return (&Peer{Addr: *a, name: name}).NetAddr()
}

// Unix reports whether the address is a unix socket's.
func (a *Addr) Unix() bool { return a.kind == PeerUnix }

type PeerKind uint8

const (
	PeerNone PeerKind = iota
	PeerInet4
	PeerInet6
	PeerUnix
)

// PeerFromSockaddr converts a socket address.
func PeerFromSockaddr(sa unix.Sockaddr) Peer {
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		p := Peer{Addr: Addr{kind: PeerInet4, port: uint16(a.Port)}}
		copy(p.ip[:], a.Addr[:])
		return p
	case *unix.SockaddrInet6:
		return Peer{Addr: Addr{kind: PeerInet6, port: uint16(a.Port), zone: a.ZoneId, ip: a.Addr}}
	case *unix.SockaddrUnix:
		return Peer{Addr: Addr{kind: PeerUnix}, name: a.Name}
	}
	return Peer{}
}

// NetAddr converts the address for the API (nil if unknown).
func (p *Peer) NetAddr() net.Addr {
	switch p.kind {
	case PeerInet4:
		return NetAddr(&unix.SockaddrInet4{Port: int(p.port), Addr: [4]byte(p.ip[:4])})
	case PeerInet6:
		return NetAddr(&unix.SockaddrInet6{Port: int(p.port), ZoneId: p.zone, Addr: p.ip})
	case PeerUnix:
		return NetAddr(&unix.SockaddrUnix{Name: p.name})
	}
	return nil
}

// NetAddr converts a socket address for the API.
func NetAddr(sa unix.Sockaddr) net.Addr {
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

// String is sa as net.Addr prints it.
func String(sa unix.Sockaddr) string {
	if a := NetAddr(sa); a != nil {
		return a.String()
	}
	return "?"
}
