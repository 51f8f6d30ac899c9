package herd

import (
	"net"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// accept decodes the peer's address itself: it must read as unix.Accept4's
// would, also from a buffer that held a longer address before.
func TestAcceptPeerAddr(t *testing.T) {
	dir := t.TempDir()
	lpath := filepath.Join(dir, "l.sock")
	lfd, err := listen(endpoint{network: "unix", domain: unix.AF_UNIX, sa: &unix.SockaddrUnix{Name: lpath}}, false)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(lfd)
	var b acceptBuf
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
		fd, peer, err := accept(lfd, &b)
		if err != nil {
			t.Fatal(err)
		}
		got := peer.netAddr()
		if ua, ok := got.(*net.UnixAddr); !ok || ua.Name != tc.want || ua.Net != "unix" {
			t.Errorf("bind %q: RemoteAddr = %#v, want unix %q", tc.bind, got, tc.want)
		}
		unix.Close(fd)
		unix.Close(cfd)
	}

	// TCP, IPv4 and (where available) IPv6.
	for _, network := range []string{"tcp4", "tcp6"} {
		addr := "127.0.0.1:0"
		if network == "tcp6" {
			addr = "[::1]:0"
		}
		ep, err := parseAddr(network + "://" + addr)
		if err != nil {
			t.Fatal(err)
		}
		lfd, err := listen(ep, false)
		if err != nil {
			t.Logf("%s: %v", network, err)
			continue
		}
		sa, _ := boundSockaddr(lfd)
		c, err := net.Dial(network, sockaddrString(sa))
		if err != nil {
			unix.Close(lfd)
			t.Fatal(err)
		}
		var fd int
		var peer peerAddr
		for {
			fd, peer, err = accept(lfd, &b)
			if err != unix.EAGAIN {
				break
			}
		}
		if err != nil {
			t.Fatal(err)
		}
		if got, want := peer.netAddr().String(), c.LocalAddr().String(); got != want {
			t.Errorf("%s: RemoteAddr = %s, want %s", network, got, want)
		}
		unix.Close(fd)
		c.Close()
		unix.Close(lfd)
	}
}

// Accepted connections have TCP_NODELAY although register no longer sets
// it: Linux copies it from the listener.
func TestAcceptedNoDelay(t *testing.T) {
	got := make(chan int, 1)
	w := &Worker{Addr: "tcp://127.0.0.1:0", Count: 1, OnConnect: func(c *Conn) {
		v, err := unix.GetsockoptInt(int(c.fd), unix.IPPROTO_TCP, unix.TCP_NODELAY)
		if err != nil {
			v = -1
		}
		got <- v
	}}
	r := startWorker(t, w)
	c := r.dial(t)
	defer c.Close()
	select {
	case v := <-got:
		if v != 1 {
			t.Fatalf("accepted socket TCP_NODELAY = %d, want 1", v)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no connection")
	}
}
