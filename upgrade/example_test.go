//go:build linux || darwin || freebsd

package upgrade_test

import (
	"context"
	"log"
	"time"

	"github.com/seed358e4494/herd"
	"github.com/seed358e4494/herd/upgrade"
)

// A Process runs workers as one program: SIGINT and SIGTERM stop it
// gracefully, and SIGHUP upgrades it to the executable now at its path,
// which takes over the listening sockets while this process drains.
func ExampleProcess() {
	w := &herd.Worker{Name: "echo", Addr: "text://0.0.0.0:9000", ReusePort: true,
		OnMessage: func(c *herd.Conn, msg []byte) { c.Send(msg) }}
	p := &upgrade.Process{Workers: []*herd.Worker{w}, UpgradeGrace: 5 * time.Second}
	if err := p.Run(context.Background()); err != nil {
		log.Fatal(err)
	}
}
