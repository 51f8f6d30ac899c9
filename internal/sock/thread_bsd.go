//go:build darwin || freebsd

package sock

// Loops' thread counters exist on Linux only.

// ThreadID is 0: no thread counters here.
func ThreadID() int { return 0 }

// ThreadSwitches is 0: no thread counters here.
func ThreadSwitches(int) uint64 { return 0 }
