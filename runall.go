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

	select {
	case <-sig:
		stop() // each Run now stops gracefully
	case <-ctx.Done():
	case <-done:
		return errors.Join(errs...)
	}
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
