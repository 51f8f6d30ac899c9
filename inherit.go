//go:build linux || darwin || freebsd

package herd

// Listening sockets a process starts with: those its parent handed over in
// an upgrade (named in HERD_LISTENERS), and those systemd's socket
// activation passes (LISTEN_FDS). Listen takes them instead of binding
// anew, so not one connection waiting in their accept queues is lost.

import (
	"encoding/json"
	"os"
	"strconv"
	"sync"

	"golang.org/x/sys/unix"
)

// Environment of an upgrade's child process.
const (
	// envListeners names the listening sockets handed over, as JSON: each
	// worker's key (see listenKey) and its descriptors.
	envListeners = "HERD_LISTENERS"
	// envReady is the descriptor of the pipe on which the child says it
	// is ready (it writes one line, then closes it).
	envReady = "HERD_UPGRADE_READY"
	// sdListenFDsStart is the first descriptor systemd passes.
	sdListenFDsStart = 3
)

// inherited holds the sockets the process started with until workers
// claim them.
var inherited struct {
	once    sync.Once
	mu      sync.Mutex
	byKey   map[string][]int // handed over by the parent (HERD_LISTENERS)
	systemd []int            // passed by systemd (LISTEN_FDS), in order
}

func loadInherited() {
	inherited.once.Do(func() {
		if v := os.Getenv(envListeners); v != "" {
			var m map[string][]int
			if json.Unmarshal([]byte(v), &m) == nil {
				inherited.byKey = m
			}
		}
		if pid, _ := strconv.Atoi(os.Getenv("LISTEN_PID")); pid == os.Getpid() {
			n, _ := strconv.Atoi(os.Getenv("LISTEN_FDS"))
			for fd := sdListenFDsStart; fd < sdListenFDsStart+n; fd++ {
				inherited.systemd = append(inherited.systemd, fd)
			}
		}
		if fd, err := strconv.Atoi(os.Getenv(envReady)); err == nil {
			unix.CloseOnExec(fd) // for this process only, until it is ready
		}
		// Not for the processes this one starts: an upgrade's child gets
		// its own.
		for _, k := range []string{envListeners, "LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"} {
			os.Unsetenv(k)
		}
	})
}

// listenKey names a worker's listeners across an upgrade: the child, run
// with the same arguments, builds its workers with the same Name and Addr.
func (w *Worker) listenKey() string { return w.Name + "\x00" + w.Addr }

// takeInherited returns the listening sockets the process started with for
// this worker: those the parent handed over under its key, else those
// systemd passed that are bound to ep's address. They are made
// non-blocking and close-on-exec; sockets that are not listening are left
// alone.
func (w *Worker) takeInherited(ep endpoint) []int {
	loadInherited()
	inherited.mu.Lock()
	defer inherited.mu.Unlock()
	var fds []int
	if got, ok := inherited.byKey[w.listenKey()]; ok {
		delete(inherited.byKey, w.listenKey())
		for _, fd := range got {
			if isListener(fd) || (ep.network == "udp" && isDatagram(fd)) {
				fds = append(fds, fd)
			}
		}
	}
	if len(fds) == 0 {
		want := sockaddrString(ep.sa)
		rest := inherited.systemd[:0]
		for _, fd := range inherited.systemd {
			if sa, err := unix.Getsockname(fd); err == nil && sockaddrString(sa) == want && (isListener(fd) || (ep.network == "udp" && isDatagram(fd))) {
				fds = append(fds, fd)
			} else {
				rest = append(rest, fd)
			}
		}
		inherited.systemd = rest
	}
	for _, fd := range fds {
		unix.CloseOnExec(fd)
		unix.SetNonblock(fd, true)
		if ep.network == "udp" {
			inheritDrops(fd)
		}
	}
	return fds
}

// isDatagram reports whether fd is a datagram socket.
func isDatagram(fd int) bool {
	v, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE)
	return err == nil && v == unix.SOCK_DGRAM
}

// isListener reports whether fd is a listening stream socket.
func isListener(fd int) bool {
	v, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN)
	return err == nil && v == 1
}

// unclaimedInherited closes the sockets handed over that no worker took
// (the new binary serves fewer addresses) and returns how many there were.
// systemd's are left alone: the unit may pass sockets for other uses.
func unclaimedInherited() int {
	loadInherited()
	inherited.mu.Lock()
	defer inherited.mu.Unlock()
	n := 0
	for k, fds := range inherited.byKey {
		for _, fd := range fds {
			unix.Close(fd)
			n++
		}
		delete(inherited.byKey, k)
	}
	return n
}
