package harness

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// SyscallsEnv, when set, makes Measure count the server's system calls over
// the window with perf (Linux, root or perf_event_paranoid ≤ 1, and the
// raw_syscalls tracepoint): an exact count where CPU time is noisy.
const SyscallsEnv = "HERDBENCH_SYSCALLS"

// syscallCounter is a perf stat counting this process's system calls.
type syscallCounter struct {
	cmd *exec.Cmd
	out bytes.Buffer
}

// startSyscallCounter attaches perf to this process. perf needs a moment
// to attach: the caller starts it before the window.
func startSyscallCounter() (*syscallCounter, error) {
	sc := &syscallCounter{}
	sc.cmd = exec.Command("perf", "stat", "-x", ",", "-e", "raw_syscalls:sys_enter", "-p", strconv.Itoa(os.Getpid()))
	sc.cmd.Stderr = &sc.out
	if err := sc.cmd.Start(); err != nil {
		return nil, fmt.Errorf("perf: %w", err)
	}
	time.Sleep(300 * time.Millisecond)
	return sc, nil
}

// stop ends the count and returns it.
func (sc *syscallCounter) stop() (int64, error) {
	sc.cmd.Process.Signal(syscall.SIGINT)
	if err := sc.cmd.Wait(); err != nil {
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			return 0, fmt.Errorf("perf: %w", err)
		}
	}
	// CSV: count,unit,event,...
	for _, line := range strings.Split(sc.out.String(), "\n") {
		f := strings.Split(line, ",")
		if len(f) > 2 && f[2] == "raw_syscalls:sys_enter" {
			n, err := strconv.ParseInt(f[0], 10, 64)
			if err != nil {
				return 0, fmt.Errorf("perf: %q: %w", line, err)
			}
			return n, nil
		}
	}
	return 0, fmt.Errorf("perf printed no count: %q", sc.out.String())
}
