package herd

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestListenFilesClosedFile: a closed *os.File among files is left alone.
// Before, adopt ignored the error of reading its descriptor, and took
// descriptor 0 instead (here a listening socket, as inetd would leave it).
func TestListenFilesClosedFile(t *testing.T) {
	// Put a listening socket on descriptor 0 (as inetd/systemd
	// StandardInput=socket would) and keep the real stdin aside.
	saved, err := unix.Dup(0)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { unix.Dup3(saved, 0, 0); unix.Close(saved) }()
	ln0, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln0.Close()
	f0, _ := ln0.(*net.TCPListener).File()
	unix.Dup3(int(f0.Fd()), 0, 0)
	f0.Close()

	closed, _ := listenerFile(t)
	closed.Close() // a careless caller closed it already

	w := &Worker{Addr: "text://127.0.0.1:0", Count: 1, OnMessage: textEcho, Logger: quietLogger()}
	used, err := w.ListenFiles([]*os.File{closed})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Shutdown(context.Background())
	if len(used) != 0 {
		t.Errorf("a closed file was reported used: %v", names(used))
	}
	if got := w.ListenAddr().String(); got == ln0.Addr().String() {
		t.Errorf("the worker serves descriptor 0's socket %s, which it was never given", got)
	}
}

// TestListenFilesUnixKeepsFile: a worker that took a unix socket from
// files leaves the socket's file in place when it stops: the caller's
// listener (systemd's, an upgrade's old process's) stays reachable.
func TestListenFilesUnixKeepsFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	defer ln.Close()
	f, err := ln.File()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()

	w := &Worker{Addr: "unix://" + path, Count: 1, OnMessage: textEcho, Logger: quietLogger()}
	if used, err := w.ListenFiles([]*os.File{f}); err != nil || len(used) != 1 {
		t.Fatalf("ListenFiles: %v %v", used, err)
	}
	r := startWorker(t, w)
	waitFor(t, 5*time.Second, "loops", func() bool { return w.Loops() != nil })
	r.cancel()
	r.wait(t)
	if _, err := os.Stat(path); err != nil {
		t.Errorf("the worker removed the caller's socket file: %v", err)
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err != nil {
		t.Errorf("the caller's still-open listener is unreachable: %v", err)
	} else {
		c.Close()
	}
}
