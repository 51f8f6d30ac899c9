//go:build darwin || freebsd

package herd

// Loops' thread counters exist on Linux only.

func threadID() int { return 0 }

func threadSwitches(int) uint64 { return 0 }
