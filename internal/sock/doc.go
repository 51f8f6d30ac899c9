//go:build linux || darwin || freebsd

// Package sock holds herd's system calls: raw socket, accept, connect,
// read and write, recvmmsg/sendmmsg, splice, the SO_REUSEPORT group's
// steering, and the loops' thread counters, as internal/poll holds the
// poller's. Close is the one way herd closes a descriptor.
//
// On Linux, the calls a loop makes for each connection (accept4, connect,
// setsockopt, read, write, writev, sendto, shutdown, close, and the ioctl
// that tells what is unread) are raw system calls: on a non-blocking
// socket none of them waits, so they skip the Go scheduler's bookkeeping
// for calls that might (entersyscall, exitsyscall). That bookkeeping costs
// more than its ~100ns: over loopback, a connect or a close runs the
// peer's side of TCP too and can take 20µs, after which the runtime's
// sysmon hands the loop's P to another thread, which wakes for nothing (a
// close and a connect were 40% of a proxying loop's time).
package sock

// MaxIovecs bounds the buffers one Writev takes.
const MaxIovecs = 64
