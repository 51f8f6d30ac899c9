package herd_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"time"

	"github.com/seed358e4494/herd"
	"github.com/seed358e4494/herd/protocol"
)

// A text-protocol echo server on two loops, and one client talking to it.
func Example() {
	w := &herd.Worker{Addr: "text://127.0.0.1:0", Count: 2, ReusePort: true}
	w.OnMessage = func(c *herd.Conn, msg []byte) {
		c.Send(append([]byte("echo: "), msg...))
	}
	if err := w.Listen(); err != nil { // binds now, so ListenAddr is known
		fmt.Println(err)
		return
	}
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	done := make(chan error)
	go func() { done <- w.Run(ctx) }()

	conn, err := net.Dial("tcp", w.ListenAddr().String())
	if err != nil {
		fmt.Println(err)
		return
	}
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprint(conn, "hello\nworld\n")
	r := bufio.NewReader(conn)
	for i := 0; i < 2; i++ {
		line, _ := r.ReadString('\n')
		fmt.Print(line)
	}
	conn.Close()
	stop()
	fmt.Println(<-done)
	// Output:
	// echo: hello
	// echo: world
	// <nil>
}

// Hand slow work to a goroutine and Send the answer from there: Send is safe
// from any goroutine. msg must be copied, since it is only valid during
// OnMessage.
func ExampleConn_Send_fromGoroutine() {
	w := &herd.Worker{Addr: "text://127.0.0.1:0", Count: 1}
	w.OnMessage = func(c *herd.Conn, msg []byte) {
		word := string(msg) // copy
		go func() {
			c.Send([]byte(strings.ToUpper(word)))
		}()
	}
	w.Listen()
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	go w.Run(ctx)

	conn, _ := net.Dial("tcp", w.ListenAddr().String())
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprint(conn, "herd\n")
	line, _ := bufio.NewReader(conn).ReadString('\n')
	fmt.Print(line)
	// Output: HERD
}

// Least-conns spreads a few long-lived connections one per loop, which a
// reuseport hash does not promise.
func ExampleAcceptLeastConns() {
	w := &herd.Worker{Addr: "tcp://127.0.0.1:0", Count: 4, Accept: herd.AcceptLeastConns}
	connected := make(chan struct{}, 4)
	w.OnConnect = func(c *herd.Conn) { connected <- struct{}{} }
	w.Listen()
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	done := make(chan error)
	go func() { done <- w.Run(ctx) }()

	var conns []net.Conn
	for i := 0; i < 4; i++ {
		c, err := net.Dial("tcp", w.ListenAddr().String())
		if err != nil {
			fmt.Println(err)
			return
		}
		conns = append(conns, c)
		<-connected
	}
	for _, l := range w.Stats().Loops {
		fmt.Printf("loop %d: %d connection(s)\n", l.Index, l.Active)
	}
	for _, c := range conns {
		c.Close()
	}
	stop()
	<-done
	// Output:
	// loop 0: 1 connection(s)
	// loop 1: 1 connection(s)
	// loop 2: 1 connection(s)
	// loop 3: 1 connection(s)
}

// Per-loop timers run on the loop, like callbacks.
func ExampleLoop_Every() {
	ticks := make(chan int, 3)
	w := &herd.Worker{Addr: "tcp://127.0.0.1:0", Count: 1}
	w.OnWorkerStart = func(l *herd.Loop) {
		n := 0
		var t *herd.Timer
		t = l.Every(time.Millisecond, func() {
			n++ // no lock: only this loop touches n
			ticks <- n
			if n == 3 {
				t.Stop()
			}
		})
	}
	w.Listen()
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- w.Run(ctx) }()
	for i := 0; i < 3; i++ {
		fmt.Println("tick", <-ticks)
	}
	stop()
	<-done
	// Output:
	// tick 1
	// tick 2
	// tick 3
}

// A one-shot protocol: the client sends one line and reads the answer to the
// end of the stream. By the protocol it sends nothing more, so the server
// closes without waiting for the client's end of stream (Close would wait
// up to StopTimeout for it).
func ExampleConn_CloseNoWait() {
	w := &herd.Worker{Addr: "text://127.0.0.1:0", Count: 1}
	w.OnMessage = func(c *herd.Conn, msg []byte) {
		c.Send([]byte("bye " + string(msg)))
		c.CloseNoWait()
	}
	closed := make(chan struct{})
	w.OnClose = func(c *herd.Conn) { close(closed) }
	if err := w.Listen(); err != nil {
		fmt.Println(err)
		return
	}
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	done := make(chan error)
	go func() { done <- w.Run(ctx) }()

	conn, err := net.Dial("tcp", w.ListenAddr().String())
	if err != nil {
		fmt.Println(err)
		return
	}
	defer conn.Close() // only after the server has closed
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprint(conn, "alice\n")
	answer, err := io.ReadAll(conn) // to the server's end of stream
	fmt.Printf("client: %q %v\n", answer, err)
	select {
	case <-closed: // while the client's side is still open
		fmt.Println("server: closed")
	case <-time.After(2 * time.Second):
		fmt.Println("server: still lingering")
	}
	stop()
	<-done
	// Output:
	// client: "bye alice\n" <nil>
	// server: closed
}

// A goroutine that streams to a connection waits for the peer with
// WaitWritable before each Write, so a slow client slows the producer
// instead of growing the server's queue; Write never drops what is owed.
// Hold keeps the connection open for the stream if the client half-closes
// or the worker stops gracefully meanwhile.
func ExampleConn_WaitWritable() {
	w := &herd.Worker{Addr: "tcp://127.0.0.1:0", Count: 1}
	w.OnConnect = func(c *herd.Conn) {
		hold := c.Hold()
		go func() {
			defer hold.Release()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			chunk := make([]byte, 64<<10)
			for i := 0; i < 16; i++ { // 1 MiB
				if err := c.WaitWritable(ctx); err != nil {
					return // the client left, or ctx ended
				}
				c.Write(chunk)
			}
			c.Close() // after the queue is written
		}()
	}
	w.Listen()
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	go w.Run(ctx)

	conn, _ := net.Dial("tcp", w.ListenAddr().String())
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	n, err := io.Copy(io.Discard, conn)
	fmt.Println(n, err)
	// Output: 1048576 <nil>
}

// A Worker: the address (its scheme picks the protocol), the loops and how
// connections reach them, the callbacks; Stats tells how the work spread.
func ExampleWorker() {
	w := &herd.Worker{
		Name:   "upper",
		Addr:   "text://127.0.0.1:0", // newline-delimited messages
		Count:  2,                    // event loops (0: one per CPU)
		Accept: herd.AcceptRoundRobin,
		OnMessage: func(c *herd.Conn, msg []byte) {
			c.Send(bytes.ToUpper(msg))
		},
	}
	if err := w.Listen(); err != nil {
		fmt.Println(err)
		return
	}
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- w.Run(ctx) }()

	for _, word := range []string{"one", "two"} {
		conn, _ := net.Dial("tcp", w.ListenAddr().String())
		conn.SetDeadline(time.Now().Add(5 * time.Second))
		fmt.Fprintln(conn, word)
		line, _ := bufio.NewReader(conn).ReadString('\n')
		fmt.Print(line)
		conn.Close()
	}
	st := w.Stats()
	fmt.Println(st.Mode, len(st.Loops), "loops, accepted:", st.Loops[0].Accepted, st.Loops[1].Accepted)
	stop()
	fmt.Println(<-done)
	// Output:
	// ONE
	// TWO
	// round-robin 2 loops, accepted: 1 1
	// <nil>
}

// A broadcast: the message is encoded once (here with the Frame protocol),
// and each loop writes it to its own connections, on its own goroutine, as
// it is (SendRaw): no registry of connections, no lock shared by the loops.
func Example_broadcast() {
	joined := make(chan struct{}, 3)
	w := &herd.Worker{Addr: "frame://127.0.0.1:0", Count: 2,
		OnConnect: func(c *herd.Conn) { joined <- struct{}{} }}
	w.Listen()
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	go w.Run(ctx)

	var clients []net.Conn
	for i := 0; i < 3; i++ {
		c, _ := net.Dial("tcp", w.ListenAddr().String())
		c.SetDeadline(time.Now().Add(5 * time.Second))
		defer c.Close()
		clients = append(clients, c)
		<-joined
	}

	frame := protocol.Frame{}.Encode(nil, []byte("news for all")) // encoded once
	for _, l := range w.Loops() {
		l.Post(func() {
			l.Conns(func(c *herd.Conn) bool {
				c.SendRaw(frame)
				return true
			})
		})
	}

	for _, c := range clients {
		var buf [16]byte
		n, _ := io.ReadFull(c, buf[:len(frame)])
		fmt.Printf("%q\n", protocol.Frame{}.Decode(buf[:n]))
	}
	// Output:
	// "news for all"
	// "news for all"
	// "news for all"
}

// Scale changes the number of loops while the worker serves: a leaving
// loop hands its listening socket and its open connections to the loops
// that stay.
func ExampleWorker_Scale() {
	w := &herd.Worker{Addr: "text://127.0.0.1:0", Count: 4, ReusePort: true, Logger: slog.New(slog.DiscardHandler),
		OnMessage: func(c *herd.Conn, msg []byte) { c.Send(msg) }}
	w.Listen()
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	go w.Run(ctx)
	for w.Loops() == nil {
		time.Sleep(time.Millisecond)
	}
	w.Scale(context.Background(), 1)
	fmt.Println("loops:", len(w.Stats().Loops))
	w.Scale(context.Background(), 3)
	s := w.Stats()
	fmt.Println("loops:", len(s.Loops), "added:", s.LoopsAdded, "removed:", s.LoopsRemoved)
	// Output:
	// loops: 1
	// loops: 3 added: 2 removed: 3
}

// A Handover passes a worker's listening sockets to another worker (in
// an upgrade, one in a new process: package upgrade does that), which
// serves them with ListenFiles; once Committed, the first accepts no more
// and the second serves every new connection, on the same address.
func ExampleWorker_Handover() {
	echo := func(c *herd.Conn, msg []byte) { c.Send(msg) }
	quiet := slog.New(slog.DiscardHandler)
	old := &herd.Worker{Addr: "text://127.0.0.1:0", Count: 1, OnMessage: echo, Logger: quiet}
	old.Listen()
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	go old.Run(ctx)
	for old.Loops() == nil { // Handover lends a running worker's sockets
		time.Sleep(time.Millisecond)
	}

	h, err := old.Handover()
	if err != nil {
		fmt.Println(err)
		return
	}
	defer h.Rollback() // nothing after Commit
	next := &herd.Worker{Addr: old.Addr, Count: 1, OnMessage: func(c *herd.Conn, msg []byte) {
		c.Send(append([]byte("next: "), msg...))
	}, Logger: quiet}
	used, err := next.ListenFiles(h.Files)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("took", len(used), "socket; same address:", next.ListenAddr().String() == old.ListenAddr().String())
	go next.Run(ctx)
	h.Commit()

	c, _ := net.Dial("tcp", next.ListenAddr().String())
	defer c.Close()
	fmt.Fprintln(c, "hello")
	line, _ := bufio.NewReader(c).ReadString('\n')
	fmt.Print(line)
	// Output:
	// took 1 socket; same address: true
	// next: hello
}

// A loop dials out (Workerman's AsyncTcpConnection): a client of a text
// server, with its own callbacks, on the loop that dialed.
func ExampleLoop_Dial() {
	server := &herd.Worker{Addr: "text://127.0.0.1:0", Count: 1, Logger: slog.New(slog.DiscardHandler), OnMessage: func(c *herd.Conn, msg []byte) {
		c.Send(append([]byte("server: "), msg...))
	}}
	server.Listen()
	got := make(chan string, 1)
	client := &herd.Worker{Addr: "tcp://127.0.0.1:0", Count: 1, Logger: slog.New(slog.DiscardHandler)}
	client.OnWorkerStart = func(l *herd.Loop) {
		l.Dial(context.Background(), server.ListenAddr().String(), &herd.Dialer{
			Protocol:  protocol.Text{},
			OnConnect: func(c *herd.Conn) { c.Send([]byte("hello")) },
			OnMessage: func(c *herd.Conn, msg []byte) { got <- string(msg); c.Close() },
			OnError:   func(_ *herd.Conn, err error) { got <- err.Error() },
		})
	}
	client.Listen()
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 2)
	go func() { done <- server.Run(ctx) }()
	go func() { done <- client.Run(ctx) }()
	fmt.Println(<-got)
	stop()
	<-done
	<-done
	// Output: server: hello
}

// A TCP proxy in a few lines: each connection is piped to a backend
// dialed from its loop, with backpressure both ways (the balancer package
// does this with backends to choose from).
func ExamplePipe() {
	backend := &herd.Worker{Addr: "text://127.0.0.1:0", Count: 1, Logger: slog.New(slog.DiscardHandler), OnMessage: func(c *herd.Conn, msg []byte) {
		c.Send(append([]byte("backend: "), msg...))
	}}
	backend.Listen()
	proxy := &herd.Worker{Addr: "tcp://127.0.0.1:0", Count: 2, Logger: slog.New(slog.DiscardHandler)}
	proxy.OnConnect = func(client *herd.Conn) {
		client.PauseRecv() // its bytes wait in the kernel until the backend is there
		client.Loop().Dial(context.Background(), backend.ListenAddr().String(), &herd.Dialer{
			OnConnect: func(b *herd.Conn) {
				herd.Pipe(client, b, nil)
				client.ResumeRecv()
			},
			OnError: func(*herd.Conn, error) { client.Close() },
		})
	}
	proxy.Listen()
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 2)
	go func() { done <- backend.Run(ctx) }()
	go func() { done <- proxy.Run(ctx) }()

	c, _ := net.Dial("tcp", proxy.ListenAddr().String())
	fmt.Fprintln(c, "hello")
	line, _ := bufio.NewReader(c).ReadString('\n')
	fmt.Print(line)
	c.Close()
	stop()
	<-done
	<-done
	// Output: backend: hello
}

// numbered is a protocol that keeps state per connection: it numbers the
// lines each client sends, and answers the client's end of stream with a
// count. Its state is the Handler the loop hands each read to (a
// Protocol holds none); EndHandler lets it answer the end before the
// connection closes.
type numbered struct {
	partial []byte // the start of a line not yet whole
	lines   int
}

func (n *numbered) OnData(c *herd.Conn, data []byte) {
	for {
		i := bytes.IndexByte(data, '\n')
		if i < 0 {
			n.partial = append(n.partial, data...) // data is only valid during the call
			return
		}
		n.lines++
		line := append(n.partial, data[:i]...)
		c.Send([]byte(fmt.Sprintf("%d: %s\n", n.lines, line)))
		n.partial, data = n.partial[:0], data[i+1:]
	}
}

func (n *numbered) OnEnd(c *herd.Conn) {
	c.Send([]byte(fmt.Sprintf("bye after %d lines\n", n.lines)))
	c.Close() // once the queue is written
}

func (n *numbered) OnClose(*herd.Conn) {}

// A protocol of your own with state per connection: OnConnect gives each
// connection its Handler (see Handler, EndHandler, Stopper and LoopMover
// for what the loop asks of one).
func ExampleHandler() {
	w := &herd.Worker{Addr: "tcp://127.0.0.1:0", Count: 1, Logger: slog.New(slog.DiscardHandler)}
	w.OnConnect = func(c *herd.Conn) { c.SetHandler(&numbered{}) }
	if err := w.Listen(); err != nil {
		fmt.Println(err)
		return
	}
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	go w.Run(ctx)

	conn, err := net.Dial("tcp", w.ListenAddr().String())
	if err != nil {
		fmt.Println(err)
		return
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprint(conn, "alpha\nbe")
	time.Sleep(10 * time.Millisecond) // the line arrives in two reads
	fmt.Fprint(conn, "ta\n")
	conn.(*net.TCPConn).CloseWrite()
	out, _ := io.ReadAll(conn)
	fmt.Print(string(out))
	// Output:
	// 1: alpha
	// 2: beta
	// bye after 2 lines
}
