// Package cfloor is the benchmark's floor: a minimal epoll server in C
// (cfloor.c), run in the benchmark process through cgo. N threads, each
// with its own SO_REUSEPORT listener on one loopback port and its own
// level-triggered epoll; per readiness event one read into the thread's
// 64 KiB buffer and one write of the answer: the echo of the bytes, or
// every HTTP hello of the read in one batch, as the gnet handler of the
// harness answers them. It costs what the system calls cost and little
// more, so herd's and gnet's CPU per op can be read against it.
//
// It builds on Linux with cgo only; elsewhere Available is false and Start
// fails.
package cfloor

// Loop is one thread's counters since start.
type Loop struct {
	Accepted uint64 // connections accepted
	Work     uint64 // reads handed to the handler
	Deferred uint64 // writes the socket did not take whole (rest sent on EPOLLOUT)
	Open     int64  // connections open
}
