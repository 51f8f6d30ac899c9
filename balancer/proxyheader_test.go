package balancer

import (
	"bytes"
	"net"
	"testing"
)

func tcp(ip string, port int) *net.TCPAddr {
	return &net.TCPAddr{IP: net.ParseIP(ip), Port: port}
}

// The expected headers are written out from the spec
// (haproxy.org/download/2.6/doc/proxy-protocol.txt): v1 in section 2.1,
// v2 in 2.2. 56324 is 0xdc04, 443 is 0x01bb.
func TestProxyHeader(t *testing.T) {
	v2sig := "\x0d\x0a\x0d\x0a\x00\x0d\x0a\x51\x55\x49\x54\x0a"
	for _, tc := range []struct {
		name     string
		version  int
		src, dst net.Addr
		want     string
	}{
		{"v1 TCP4", 1, tcp("192.0.2.1", 56324), tcp("198.51.100.11", 443),
			"PROXY TCP4 192.0.2.1 198.51.100.11 56324 443\r\n"},
		{"v1 TCP4 from mapped", 1, tcp("::ffff:192.0.2.1", 56324), tcp("198.51.100.11", 443),
			"PROXY TCP4 192.0.2.1 198.51.100.11 56324 443\r\n"},
		{"v1 TCP6", 1, tcp("2001:db8::1", 56324), &net.TCPAddr{IP: net.ParseIP("2001:db8::11"), Port: 443, Zone: "eth0"},
			"PROXY TCP6 2001:db8::1 2001:db8::11 56324 443\r\n"},
		{"v1 UNKNOWN mixed", 1, tcp("192.0.2.1", 56324), tcp("2001:db8::11", 443),
			"PROXY UNKNOWN\r\n"},
		{"v1 UNKNOWN unix", 1, &net.UnixAddr{Name: "@", Net: "unix"}, &net.UnixAddr{Name: "/run/lb.sock", Net: "unix"},
			"PROXY UNKNOWN\r\n"},
		{"v1 UNKNOWN nil", 1, nil, (*net.TCPAddr)(nil),
			"PROXY UNKNOWN\r\n"},
		{"v2 IPv4", 2, tcp("192.0.2.1", 56324), tcp("198.51.100.11", 443),
			v2sig + "\x21\x11\x00\x0c" +
				"\xc0\x00\x02\x01" + "\xc6\x33\x64\x0b" + // 192.0.2.1, 198.51.100.11
				"\xdc\x04" + "\x01\xbb"},
		{"v2 IPv4 from mapped", 2, tcp("192.0.2.1", 56324), tcp("::ffff:198.51.100.11", 443),
			v2sig + "\x21\x11\x00\x0c" +
				"\xc0\x00\x02\x01" + "\xc6\x33\x64\x0b" +
				"\xdc\x04" + "\x01\xbb"},
		{"v2 IPv6", 2, tcp("2001:db8::1", 56324), tcp("2001:db8::11", 443),
			v2sig + "\x21\x21\x00\x24" +
				"\x20\x01\x0d\xb8\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01" +
				"\x20\x01\x0d\xb8\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x11" +
				"\xdc\x04" + "\x01\xbb"},
		{"v2 LOCAL unix", 2, &net.UnixAddr{Name: "@", Net: "unix"}, &net.UnixAddr{Name: "/run/lb.sock", Net: "unix"},
			v2sig + "\x20\x00\x00\x00"},
		{"v2 LOCAL mixed", 2, tcp("2001:db8::1", 56324), tcp("198.51.100.11", 443),
			v2sig + "\x20\x00\x00\x00"},
	} {
		if got := appendProxyHeader(nil, tc.version, tc.src, tc.dst); string(got) != tc.want {
			t.Errorf("%s:\n got % x\nwant % x", tc.name, got, tc.want)
		}
	}
}

func TestProxyHeaderAppends(t *testing.T) {
	src, dst := tcp("192.0.2.1", 56324), tcp("198.51.100.11", 443)
	for _, version := range []int{1, 2} {
		prefix := []byte("already queued")
		buf := append(make([]byte, 0, 128), prefix...)
		got := appendProxyHeader(buf, version, src, dst)
		if !bytes.HasPrefix(got, prefix) || !bytes.Equal(got[len(prefix):], appendProxyHeader(nil, version, src, dst)) {
			t.Errorf("v%d: got %q", version, got)
		}
	}
}

func TestProxyHeaderAllocs(t *testing.T) {
	buf := make([]byte, 0, 128)
	for _, addrs := range [][2]net.Addr{
		{tcp("192.0.2.1", 56324), tcp("198.51.100.11", 443)},
		{tcp("2001:db8::1", 56324), tcp("2001:db8::11", 443)},
		{&net.UnixAddr{Name: "@", Net: "unix"}, nil},
	} {
		for _, version := range []int{1, 2} {
			if n := testing.AllocsPerRun(100, func() {
				buf = appendProxyHeader(buf[:0], version, addrs[0], addrs[1])
			}); n != 0 {
				t.Errorf("v%d %v: %v allocations", version, addrs[0], n)
			}
		}
	}
}

func TestProxyHeaderBadVersion(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Error("version 3 did not panic")
		}
	}()
	appendProxyHeader(nil, 3, nil, nil)
}
