package sock

import (
	"bytes"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// ThreadID is the calling thread's ID (the loop's, locked to it).
func ThreadID() int { return unix.Gettid() }

// ThreadSwitches reads a thread's voluntary context switches from /proc.
func ThreadSwitches(tid int) uint64 {
	if tid == 0 {
		return 0
	}
	b, err := os.ReadFile("/proc/self/task/" + strconv.Itoa(tid) + "/status")
	if err != nil {
		return 0
	}
	const key = "voluntary_ctxt_switches:"
	i := bytes.Index(b, []byte("\n"+key))
	if i < 0 {
		return 0
	}
	rest := b[i+1+len(key):]
	if j := bytes.IndexByte(rest, '\n'); j >= 0 {
		rest = rest[:j]
	}
	n, _ := strconv.ParseUint(string(bytes.TrimSpace(rest)), 10, 64)
	return n
}
