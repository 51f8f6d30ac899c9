//go:build darwin || freebsd

package herd

func threadID() int { return 0 }

func threadSwitches(int) uint64 { return 0 }
