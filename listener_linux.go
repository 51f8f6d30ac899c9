package herd

import "golang.org/x/sys/unix"

// Linux hashes each new connection over the sockets of a SO_REUSEPORT
// group, so per-loop listeners share the load evenly (Linux 3.9+).
const (
	reusePortBalances = true
	soReusePort       = unix.SO_REUSEPORT
	exclusiveWakeup   = true // EPOLLEXCLUSIVE, Linux 4.5+
)

// accept takes one connection, already non-blocking and close-on-exec.
func accept(lfd int) (int, unix.Sockaddr, error) {
	return unix.Accept4(lfd, unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
}
