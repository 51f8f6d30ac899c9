//go:build linux

package balancer_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"time"

	"github.com/seed358e4494/herd"
	"github.com/seed358e4494/herd/balancer"
)

// A balancer in front of two echo servers, with active checks.
func Example() {
	backend := func() string { // a goroutine echo server standing in for a real one
		ln, _ := net.Listen("tcp", "127.0.0.1:0")
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				go func() { defer c.Close(); io.Copy(c, c) }()
			}
		}()
		return ln.Addr().String()
	}
	b := &balancer.Balancer{
		Backends:  []balancer.Backend{{Addr: backend()}, {Addr: backend(), Weight: 3}},
		Algorithm: balancer.WeightedRoundRobin,
		Health:    balancer.HealthCheck{Interval: time.Second},
	}
	w := &herd.Worker{Addr: "tcp://127.0.0.1:0", Count: 2, Logger: slog.New(slog.DiscardHandler)}
	if err := b.Attach(w); err != nil {
		fmt.Println(err)
		return
	}
	if err := w.Listen(); err != nil {
		fmt.Println(err)
		return
	}
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()

	for i := 0; i < 4; i++ {
		c, err := net.Dial("tcp", w.ListenAddr().String())
		if err != nil {
			fmt.Println(err)
			return
		}
		fmt.Fprintf(c, "hello %d\n", i)
		line, _ := bufio.NewReader(c).ReadString('\n')
		fmt.Print(line)
		c.Close()
	}
	for _, be := range b.Stats().Backends {
		fmt.Println("weight", be.Weight, "took", be.Total, "state", be.State)
	}
	stop()
	<-done
	// Output:
	// hello 0
	// hello 1
	// hello 2
	// hello 3
	// weight 1 took 1 state up
	// weight 3 took 3 state up
}
