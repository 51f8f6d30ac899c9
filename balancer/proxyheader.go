package balancer

import (
	"encoding/binary"
	"net"
	"net/netip"
	"strconv"
)

// proxyV2Sig opens every version 2 header. It cannot start a v1 header or
// any common protocol's first bytes, which is how a receiver tells them
// apart.
const proxyV2Sig = "\r\n\r\n\x00\r\nQUIT\n"

// Version 2 command and family bytes.
const (
	proxyV2Local = 0x20 // version 2, LOCAL
	proxyV2Proxy = 0x21 // version 2, PROXY
	proxyV2TCP4  = 0x11 // AF_INET, SOCK_STREAM
	proxyV2TCP6  = 0x21 // AF_INET6, SOCK_STREAM
)

// appendProxyHeader appends the PROXY protocol header of the given version
// (1 or 2; it panics otherwise) for a TCP connection from src to dst (the
// client's address and the address it connected to).
//
// The addresses are sent when both are TCP over the same family, an
// IPv4-mapped IPv6 address counting as IPv4. Otherwise (a unix socket, an
// unknown address, families that differ) there is nothing the header could
// truthfully say: v1 sends "PROXY UNKNOWN" and v2 the LOCAL command, for
// which the spec has the receiver use the connection's real addresses, the
// balancer's, rather than reject the connection or trust a made-up client.
func appendProxyHeader(buf []byte, version int, src, dst net.Addr) []byte {
	s, sok := tcpAddrPort(src)
	d, dok := tcpAddrPort(dst)
	known := sok && dok && s.Addr().Is4() == d.Addr().Is4()
	switch version {
	case 1:
		if !known {
			return append(buf, "PROXY UNKNOWN\r\n"...)
		}
		if s.Addr().Is4() {
			buf = append(buf, "PROXY TCP4 "...)
		} else {
			buf = append(buf, "PROXY TCP6 "...)
		}
		buf = s.Addr().AppendTo(buf)
		buf = append(buf, ' ')
		buf = d.Addr().AppendTo(buf)
		buf = append(buf, ' ')
		buf = strconv.AppendUint(buf, uint64(s.Port()), 10)
		buf = append(buf, ' ')
		buf = strconv.AppendUint(buf, uint64(d.Port()), 10)
		return append(buf, "\r\n"...)
	case 2:
		buf = append(buf, proxyV2Sig...)
		switch {
		case !known:
			return append(buf, proxyV2Local, 0, 0, 0) // family unspecified, no addresses
		case s.Addr().Is4():
			sa, da := s.Addr().As4(), d.Addr().As4()
			buf = append(buf, proxyV2Proxy, proxyV2TCP4, 0, 12)
			buf = append(buf, sa[:]...)
			buf = append(buf, da[:]...)
		default:
			sa, da := s.Addr().As16(), d.Addr().As16()
			buf = append(buf, proxyV2Proxy, proxyV2TCP6, 0, 36)
			buf = append(buf, sa[:]...)
			buf = append(buf, da[:]...)
		}
		buf = binary.BigEndian.AppendUint16(buf, s.Port())
		return binary.BigEndian.AppendUint16(buf, d.Port())
	}
	panic("balancer: PROXY protocol version " + strconv.Itoa(version) + ", want 1 or 2")
}

// tcpAddrPort returns a's IP, IPv4-mapped addresses unmapped and any zone
// dropped (the header has no room for one), and port.
func tcpAddrPort(a net.Addr) (netip.AddrPort, bool) {
	t, ok := a.(*net.TCPAddr)
	if !ok || t == nil {
		return netip.AddrPort{}, false
	}
	ip, ok := netip.AddrFromSlice(t.IP)
	if !ok {
		return netip.AddrPort{}, false
	}
	return netip.AddrPortFrom(ip.Unmap(), uint16(t.Port)), true
}
