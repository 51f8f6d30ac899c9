//go:build linux || darwin || freebsd

package gateway_test

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"net"

	"github.com/seed358e4494/herd"
	"github.com/seed358e4494/herd/gateway"
	"github.com/seed358e4494/herd/protocol"
)

// A text-protocol server where each line a client sends is a command:
// "join ROOM" puts it in a group, "say ROOM TEXT" sends to the group.
// With a Broker (the redis module's), the same code reaches the members
// connected to other processes.
func ExampleGateway() {
	g := &gateway.Gateway{Node: "a"}
	w := &herd.Worker{Addr: "text://127.0.0.1:0", Count: 2, Logger: slog.New(slog.DiscardHandler)}
	w.OnConnect = func(c *herd.Conn) { c.SetContext(g.Add(gateway.Raw(c, protocol.Text{}))) }
	w.OnClose = func(c *herd.Conn) { g.Remove(c.Context().(gateway.ClientID)) }
	w.OnMessage = func(c *herd.Conn, msg []byte) {
		id := c.Context().(gateway.ClientID)
		var room, text string
		switch n, _ := fmt.Sscanf(string(msg), "say %s %s", &room, &text); {
		case n == 2:
			g.SendToGroup(room, []byte(text))
		default:
			fmt.Sscanf(string(msg), "join %s", &room)
			g.JoinGroup(id, room)
			c.Send([]byte("joined " + room)) // the join is queued on the loop before any later fan-out
		}
	}
	g.Attach(w)
	w.Listen()
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	go w.Run(ctx)

	dial := func() (net.Conn, *bufio.Reader) {
		c, _ := net.Dial("tcp", w.ListenAddr().String())
		return c, bufio.NewReader(c)
	}
	alice, ar := dial()
	bob, br := dial()
	defer alice.Close()
	defer bob.Close()
	fmt.Fprint(alice, "join lobby\n")
	fmt.Fprint(bob, "join lobby\n")
	ar.ReadString('\n')
	br.ReadString('\n')
	fmt.Fprint(alice, "say lobby hello\n")
	got, _ := br.ReadString('\n')
	fmt.Print("bob got: ", got)
	got, _ = ar.ReadString('\n')
	fmt.Print("alice got: ", got)
	// Output:
	// bob got: hello
	// alice got: hello
}
