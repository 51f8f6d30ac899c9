//go:build linux || darwin || freebsd

package herd

// The old process's side of an upgrade: its listening sockets go to the
// child, and once the child serves, it accepts no more.

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// listenerFiles duplicates the worker's listening sockets for a child
// process (close-on-exec here; exec.Cmd's ExtraFiles passes them on).
func (w *Worker) listenerFiles() ([]*os.File, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.servingLocked() {
		return nil, fmt.Errorf("herd: worker %q: %w", w.Addr, ErrWorkerClosed)
	}
	files := make([]*os.File, 0, len(w.listeners))
	for _, fd := range w.listeners {
		nfd, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			for _, f := range files {
				f.Close()
			}
			return nil, fmt.Errorf("herd: duplicate listener of %q: %w", w.Addr, err)
		}
		files = append(files, os.NewFile(uintptr(nfd), "herd listener "+w.Addr))
	}
	return files, nil
}

// stopAccepting hands the listening sockets over for good: an upgrade's
// child accepts from them now. It returns once no loop of this worker
// watches them any more; the worker serves the connections it has until it
// is shut down, and leaves a unix socket's file in place for the child.
func (w *Worker) stopAccepting() {
	w.mu.Lock()
	w.handedOver = true
	loops, disp := append([]*Loop(nil), w.loops...), w.disp
	w.mu.Unlock()
	if disp != nil {
		disp.stop() // it stops watching the listener as it exits
		<-disp.exited
	}
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
