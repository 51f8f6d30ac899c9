//go:build linux || darwin || freebsd

package herd

// Listening sockets across processes: ListenFiles serves those the process
// holds already (an upgrade's parent handed them over, systemd's socket
// activation passed them), and Handover lends a worker's to another
// process. Package upgrade builds zero-downtime upgrades on these two;
// tableflip or a supervisor of one's own can too.

import (
	"fmt"
	"os"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/seed358e4494/herd/internal/sock"
)

// ListenFiles is Listen over sockets the process holds already. It serves
// those of files that are listening stream sockets (datagram sockets for
// udp://) bound to the worker's address, any port when Addr's port is 0,
// instead of binding anew, and returns the files it serves; the others it
// leaves alone. Where none is bound there, it binds as Listen does. It
// serves duplicates: files stay the caller's to close, and a unix
// socket's file stays in place when the worker stops (its owner removes
// it; a later bind replaces a file nobody listens on). A ReusePort worker
// given one socket that is not in a SO_REUSEPORT group (systemd without
// ReusePort=yes) accepts from it on all its loops; in the other listen
// modes a worker serves one socket, the first that matches.
//
// Addresses match exactly: a worker on tcp://0.0.0.0:8080 does not take
// a socket bound to [::]:8080 (systemd's default for ListenStream=8080);
// name the same address in both.
//
// With systemd's socket activation, pass the files it gives (descriptors
// 3 and up, LISTEN_FDS of them, coreos/go-systemd's activation.Files).
func (w *Worker) ListenFiles(files []*os.File) (used []*os.File, err error) {
	return w.listen(files)
}

// adopt duplicates the sockets among files that ep can serve, non-blocking
// and close-on-exec, and returns their descriptors and the files they came
// from.
func adopt(ep endpoint, files []*os.File) (fds []int, used []*os.File, err error) {
	for _, f := range files {
		raw, err := f.SyscallConn()
		if err != nil {
			continue
		}
		nfd := -1
		var dupErr error
		if raw.Control(func(fd uintptr) {
			if serves(ep, int(fd)) {
				nfd, dupErr = sock.Dup(int(fd))
			}
		}) != nil || (nfd < 0 && dupErr == nil) {
			continue // closed, or not a socket ep can serve
		}
		if dupErr == nil {
			dupErr = sock.SetNonblock(nfd)
		}
		if dupErr != nil {
			for _, fd := range append(fds, nfd) {
				if fd >= 0 {
					sock.Close(fd)
				}
			}
			return nil, nil, fmt.Errorf("herd: take the socket %s for %s: %w", f.Name(), ep.network, dupErr)
		}
		if ep.network == "udp" {
			inheritDrops(nfd)
		}
		fds, used = append(fds, nfd), append(used, f)
	}
	return fds, used, nil
}

// serves reports whether fd is a socket ep can serve: listening (a
// datagram socket for udp) and bound to ep's address, any port where ep's
// is 0.
func serves(ep endpoint, fd int) bool {
	sotype, listening, ok := sock.Kind(fd)
	switch {
	case !ok:
		return false
	case ep.network == "udp" && sotype != unix.SOCK_DGRAM:
		return false
	case ep.network != "udp" && (sotype != unix.SOCK_STREAM || !listening):
		return false
	}
	sa := sock.Name(fd)
	switch want := ep.sa.(type) {
	case *unix.SockaddrInet4:
		got, ok := sa.(*unix.SockaddrInet4)
		return ok && got.Addr == want.Addr && (want.Port == 0 || got.Port == want.Port)
	case *unix.SockaddrInet6:
		got, ok := sa.(*unix.SockaddrInet6)
		return ok && got.Addr == want.Addr && (want.Port == 0 || got.Port == want.Port)
	case *unix.SockaddrUnix:
		got, ok := sa.(*unix.SockaddrUnix)
		return ok && got.Name == want.Name
	}
	return false
}

// A Handover lends a worker's listening sockets to another process, the
// new one of an upgrade, which serves them with ListenFiles. Commit once
// that process serves: this worker accepts no more. Rollback if it failed:
// this worker takes its sockets back. Use it as a database transaction:
//
//	h, err := w.Handover()
//	if err != nil { ... }
//	defer h.Rollback() // does nothing after Commit
//	// start the new process with h.Files; wait until it is ready
//	h.Commit()
type Handover struct {
	// Files are duplicates of the worker's listening sockets, for the new
	// process (exec.Cmd's ExtraFiles). Commit and Rollback close them.
	Files []*os.File

	w    *Worker
	once sync.Once
}

// Handover duplicates the running worker's listening sockets for another
// process; the worker goes on accepting until Commit. It returns
// ErrNotRunning before Run, ErrWorkerClosed once the worker stops or has
// handed its sockets over, ErrLent while another Handover is open, and
// ErrHandoverOnLoop, at once, on one of the worker's loops. Until Commit
// or Rollback, Scale returns ErrLent: a loop it added would accept from a
// socket the other process does not have. Handover, Commit and Rollback
// may be called from any goroutine but the worker's loops.
func (w *Worker) Handover() (*Handover, error) {
	if w.sc.onLoop() {
		return nil, ErrHandoverOnLoop
	}
	w.scaleMu.Lock() // no Scale half-way
	defer w.scaleMu.Unlock()
	w.mu.Lock()
	defer w.mu.Unlock()
	switch {
	case w.state == stateNew || w.state == stateListening:
		return nil, ErrNotRunning
	case !w.servingLocked():
		return nil, fmt.Errorf("herd: worker %q: %w", w.Addr, ErrWorkerClosed)
	case w.lent:
		return nil, ErrLent
	}
	h := &Handover{w: w}
	for _, fd := range w.listeners {
		nfd, err := sock.Dup(fd)
		if err != nil {
			h.closeFiles()
			return nil, fmt.Errorf("herd: duplicate listener of %q: %w", w.Addr, err)
		}
		h.Files = append(h.Files, os.NewFile(uintptr(nfd), "herd listener "+w.Addr))
	}
	w.lent = true
	return h, nil
}

func (h *Handover) closeFiles() {
	for _, f := range h.Files {
		f.Close()
	}
}

// Commit hands the sockets over for good: the other process accepts from
// them now. It returns once no loop of the worker watches them any more;
// the worker serves the connections it has until it is shut down, and
// leaves a unix socket's file in place for the other process. Commit and
// Rollback act once between them.
func (h *Handover) Commit() {
	h.once.Do(func() {
		h.closeFiles()
		h.w.stopAccepting()
		h.w.endLoan()
	})
}

// Rollback takes the sockets back after the other process failed: the
// worker steers the SO_REUSEPORT group over its own loops again (the
// other process may have steered it over its own), and accepts on. After
// Commit it does nothing.
func (h *Handover) Rollback() {
	h.once.Do(func() {
		h.closeFiles()
		h.w.resteer()
		h.w.endLoan()
	})
}

func (w *Worker) endLoan() {
	w.mu.Lock()
	w.lent = false
	w.mu.Unlock()
}

// stopAccepting stops the worker's loops watching the listening sockets,
// and returns once none does.
func (w *Worker) stopAccepting() {
	w.mu.Lock()
	w.handedOver = true
	loops := append([]*Loop(nil), w.loops...)
	w.mu.Unlock()
	for _, l := range loops {
		done := make(chan struct{})
		if !l.Post(func() {
			l.stopAcceptors()
			close(done)
		}) {
			continue // stopped: it watches nothing
		}
		<-done
	}
}
