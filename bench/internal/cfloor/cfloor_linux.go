//go:build linux && cgo

package cfloor

/*
#cgo CFLAGS: -O2 -Wall
#include <stdlib.h>
#include "cfloor.h"
*/
import "C"

import (
	"fmt"
	"strconv"
	"sync"
	"syscall"
)

// Available reports whether this build has the C server.
const Available = true

// Server is a running C server.
type Server struct {
	mu    sync.Mutex // guards s against Stop
	s     *C.cf_server
	loops int
	addr  string
}

// Start starts loops threads serving echo, or with http the hello-world
// answer, on a free port of 127.0.0.1.
func Start(loops int, http bool) (*Server, error) {
	if loops < 1 {
		return nil, fmt.Errorf("cfloor: %d loops", loops)
	}
	h := C.int(0)
	if http {
		h = 1
	}
	var errno C.int
	var step *C.char
	s := C.cf_start(C.int(loops), h, &errno, &step)
	if s == nil {
		return nil, fmt.Errorf("cfloor: %s: %w", C.GoString(step), syscall.Errno(errno))
	}
	return &Server{s: s, loops: loops, addr: "127.0.0.1:" + strconv.Itoa(int(C.cf_port(s)))}, nil
}

// Addr is the listeners' address, host:port.
func (s *Server) Addr() string { return s.addr }

// Loops is every thread's counters; nil once stopped.
func (s *Server) Loops() []Loop {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.s == nil {
		return nil
	}
	out := make([]Loop, s.loops)
	for i := range out {
		var acc, work, def C.uint64_t
		var open C.int64_t
		C.cf_loop_stats(s.s, C.int(i), &acc, &work, &def, &open)
		out[i] = Loop{Accepted: uint64(acc), Work: uint64(work), Deferred: uint64(def), Open: int64(open)}
	}
	return out
}

// Active is the number of open connections.
func (s *Server) Active() int {
	n := 0
	for _, l := range s.Loops() {
		n += int(l.Open)
	}
	return n
}

// Stop makes every thread leave its loop, closes every socket and frees the
// server. A second Stop does nothing.
func (s *Server) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.s != nil {
		C.cf_stop(s.s)
		s.s = nil
	}
}

// StartUDP starts loops threads echoing datagrams on a free port of
// 127.0.0.1 (recvmmsg, then one sendmmsg per batch), and returns the
// address. They serve until the process exits: run it in a process of its
// own.
func StartUDP(loops int) (string, error) {
	var errno C.int
	var step *C.char
	port := C.cf_udp_start(C.int(loops), &errno, &step)
	if port < 0 {
		return "", fmt.Errorf("cfloor: %s: %w", C.GoString(step), syscall.Errno(errno))
	}
	return "127.0.0.1:" + strconv.Itoa(int(port)), nil
}
