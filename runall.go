//go:build linux || darwin || freebsd

package herd

import (
	"context"
	"errors"
	"os"
	"os/signal"
	"sync"
	"syscall"
)

// RunAll runs the workers until ctx ends or the process receives SIGINT or
// SIGTERM, then stops them all gracefully, each within its StopTimeout; a
// second signal closes what is left at once. It returns once every worker
// has stopped, with the errors of those that failed joined.
//
// Under a service manager that gives a NOTIFY_SOCKET (systemd's
// Type=notify), RunAll reports READY=1 once every worker's address is bound
// and its loops are starting, and STOPPING=1 when the graceful stop begins.
func RunAll(ctx context.Context, workers ...*Worker) error {
	ctx, stop := context.WithCancel(ctx)
	defer stop()
	sig := make(chan os.Signal, 2)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sig)

	for _, w := range workers {
		if err := w.Listen(); err != nil {
			for _, w := range workers {
				w.Shutdown(context.Background())
			}
			return err
		}
	}
	errs := make([]error, len(workers))
	var wg sync.WaitGroup
	for i, w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = w.Run(ctx)
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	logNotify(workers, notify("READY=1"))

	select {
	case <-sig:
		stop() // each Run now stops gracefully
	case <-ctx.Done():
	case <-done:
		return errors.Join(errs...)
	}
	logNotify(workers, notify("STOPPING=1"))
	select {
	case <-sig:
		force, cancel := context.WithCancel(context.Background())
		cancel()
		for _, w := range workers {
			w.Shutdown(force) // ended context: close at once
		}
	case <-done:
	}
	<-done
	return errors.Join(errs...)
}

// logNotify logs a failed notification to the service manager once, with
// the first worker's logger.
func logNotify(workers []*Worker, err error) {
	if err != nil && len(workers) > 0 {
		workers[0].logger().Warn("herd: notifying the service manager", "socket", os.Getenv("NOTIFY_SOCKET"), "err", err)
	}
}
