// Package sdtest stands in for systemd's notify socket in tests.
package sdtest

import (
	"net"
	"path/filepath"
	"testing"
	"time"
)

// NotifySocket sets NOTIFY_SOCKET to a datagram socket of the test's and
// returns a function that reads the next notification ("" if none comes
// within d).
func NotifySocket(t *testing.T) func(d time.Duration) string {
	path := filepath.Join(t.TempDir(), "notify")
	sock, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sock.Close() })
	t.Setenv("NOTIFY_SOCKET", path)
	return func(d time.Duration) string {
		sock.SetReadDeadline(time.Now().Add(d))
		buf := make([]byte, 256)
		n, err := sock.Read(buf)
		if err != nil {
			return ""
		}
		return string(buf[:n])
	}
}
