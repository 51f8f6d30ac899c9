package harness

import (
	"os/exec"
	"testing"

	"golang.org/x/sys/unix"
)

// The counter sees system calls this process makes in the window.
func TestSyscallCounter(t *testing.T) {
	if _, err := exec.LookPath("perf"); err != nil {
		t.Skip("no perf here")
	}
	sc, err := startSyscallCounter()
	if err != nil {
		t.Skip(err)
	}
	const calls = 5000
	for i := 0; i < calls; i++ {
		unix.Getppid()
	}
	n, err := sc.stop()
	if err != nil {
		t.Skipf("perf cannot count here: %v", err)
	}
	if n < calls {
		t.Errorf("counted %d system calls, made at least %d", n, calls)
	}
	t.Logf("%d system calls counted for %d made", n, calls)
}
