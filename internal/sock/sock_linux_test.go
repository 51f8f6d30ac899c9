package sock

import (
	"net"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// Accept decodes the peer's address itself: it must read as unix.Accept4's
// would, also from a buffer that held a longer address before.
func TestAcceptPeerAddr(t *testing.T) {
	dir := t.TempDir()
	lpath := filepath.Join(dir, "l.sock")
	lfd, err := Listen(Bind{Network: "unix", Domain: unix.AF_UNIX, SA: &unix.SockaddrUnix{Name: lpath}}, false)
	if err != nil {
		t.Fatal(err)
	}
	defer Close(lfd)
	var b AcceptBuf
	for _, tc := range []struct {
		bind string // "" for an unnamed client
		want string
	}{
		{filepath.Join(dir, "a-rather-long-client-name.sock"), filepath.Join(dir, "a-rather-long-client-name.sock")},
		{"", "@"},
		{"@herd-test-abstract", "@herd-test-abstract"},
		{filepath.Join(dir, "c.sock"), filepath.Join(dir, "c.sock")},
	} {
		cfd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM, 0)
		if err != nil {
			t.Fatal(err)
		}
		if tc.bind != "" {
			name := tc.bind
			if name[0] == '@' {
				name = "\x00" + name[1:]
			}
			if err := unix.Bind(cfd, &unix.SockaddrUnix{Name: name}); err != nil {
				t.Fatal(err)
			}
		}
		if err := unix.Connect(cfd, &unix.SockaddrUnix{Name: lpath}); err != nil {
			t.Fatal(err)
		}
		fd, peer, err := Accept(lfd, &b)
		if err != nil {
			t.Fatal(err)
		}
		got := peer.NetAddr()
		if ua, ok := got.(*net.UnixAddr); !ok || ua.Name != tc.want || ua.Net != "unix" {
			t.Errorf("bind %q: RemoteAddr = %#v, want unix %q", tc.bind, got, tc.want)
		}
		Close(fd)
		Close(cfd)
	}

	// TCP, IPv4 and (where available) IPv6.
	for _, network := range []string{"tcp4", "tcp6"} {
		ep := Bind{Network: "tcp", Domain: unix.AF_INET, SA: &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}}
		if network == "tcp6" {
			ep = Bind{Network: "tcp", Domain: unix.AF_INET6, SA: &unix.SockaddrInet6{Addr: [16]byte{15: 1}}}
		}
		lfd, err := Listen(ep, false)
		if err != nil {
			t.Logf("%s: %v", network, err)
			continue
		}
		sa, _ := Bound(lfd)
		c, err := net.Dial(network, String(sa))
		if err != nil {
			Close(lfd)
			t.Fatal(err)
		}
		var fd int
		var peer Peer
		for {
			fd, peer, err = Accept(lfd, &b)
			if err != unix.EAGAIN {
				break
			}
		}
		if err != nil {
			t.Fatal(err)
		}
		if got, want := peer.NetAddr().String(), c.LocalAddr().String(); got != want {
			t.Errorf("%s: RemoteAddr = %s, want %s", network, got, want)
		}
		Close(fd)
		c.Close()
		Close(lfd)
	}
}
