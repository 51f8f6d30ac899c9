//go:build !linux && !darwin && !freebsd

package herd

// herd runs on Linux (epoll), macOS and FreeBSD (kqueue). Elsewhere the
// package would compile to its documentation alone and importers would
// fail on undefined names; this says why instead.
var _ = herd_runs_on_linux_darwin_and_freebsd_only
