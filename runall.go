//go:build linux || darwin || freebsd

package herd

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"os/signal"
	"sync"
	"syscall"

	"github.com/seed358e4494/herd/internal/service"
)

// RunAll runs the workers until ctx ends or the process receives SIGINT or
// SIGTERM, then stops them all gracefully, each within its StopTimeout; a
// second signal closes what is left at once. It returns once every worker
// has stopped, with the errors of those that failed joined. Workers that
// are not listening yet are made to (Listen); if one cannot, RunAll shuts
// them all down and returns its error.
//
// Under a service manager that gives a NOTIFY_SOCKET (systemd's
// Type=notify), RunAll reports READY=1 once every worker's address is bound
// and its loops are starting, and STOPPING=1 when the graceful stop begins.
//
// RunAll neither re-executes the program nor takes sockets the process
// inherited: package upgrade does both, for a program that asks.
func RunAll(ctx context.Context, workers ...*Worker) error {
	hooks := service.HooksFrom(ctx)
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
	log := slog.Default()
	if len(workers) > 0 {
		log = workers[0].logger()
	}
	logNotify := func(err error) {
		if err != nil {
			log.Warn("herd: notifying the service manager", "socket", os.Getenv("NOTIFY_SOCKET"), "err", err)
		}
	}
	logNotify(hooks.Ready())

	select {
	case <-sig:
		stop() // each Run now stops gracefully
	case <-ctx.Done():
	case <-done:
		return errors.Join(errs...)
	}
	logNotify(hooks.Stopping())
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
