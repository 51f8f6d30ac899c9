// Package herd runs event-loop socket servers in the style of PHP's
// Workerman: a Worker listens on an address and serves it with Count event
// loops, one goroutine each (locked to its own OS thread with
// Worker.LockOSThread) sleeping on its own epoll (Linux) or kqueue (macOS,
// FreeBSD).
//
//	w := &herd.Worker{Addr: "text://127.0.0.1:9000", Count: 4, ReusePort: true}
//	w.OnMessage = func(c *herd.Conn, msg []byte) { c.Send(msg) }
//	log.Fatal(herd.RunAll(context.Background(), w))
//
// # How connections reach loops
//
// Workerman's users know the problem: four workers start and one does all
// the work. herd makes the choice explicit and measurable (Worker.Stats):
//
//   - ReusePort: each loop has its own listening socket in a SO_REUSEPORT
//     group and the kernel hashes connections over them. Even for many short
//     connections, with no shared accept queue; blind to load, so a handful
//     of long-lived connections can land on the same loop. Linux and FreeBSD
//     only; elsewhere herd falls back to AcceptShared and logs it.
//   - AcceptShared: one listening socket in every loop's poller, registered
//     with EPOLLEXCLUSIVE on Linux so one loop wakes per connection. Cheap and
//     cache-friendly, but the kernel wakes the first loop, in the order they
//     registered, that is waiting: work concentrates on a few loops.
//   - AcceptRoundRobin, AcceptLeastConns: shared, and kept even: a loop
//     ahead of another (by connections taken, or held) stops watching the
//     socket until the others catch up. Even for long-lived connections,
//     with no hand-off between goroutines: the loop that accepts serves.
//
// # The threading rule
//
// Callbacks (OnConnect, OnMessage, OnClose, timers, Loop.Post) run on the
// goroutine of the loop that owns the connection, one at a time, and must
// not block: hand slow work to a goroutine. Every method of Conn, Loop and
// Timer is safe from any goroutine, except four that read or change what
// only the loop touches, and may only be called on the loop (from a
// callback, or a function given to Post): Loop.Now (the loop's clock),
// Loop.Conns, Conn.LastActive and Conn.SetHandler. Work for a connection
// goes through Conn.Post, which follows the connection when Scale moves it
// to another loop; Loop.Post runs on that one loop, wherever its
// connections have gone. Conn.Send writes directly when nothing
// is queued, so a reply sent from a worker goroutine costs no hop through the
// loop.
//
// The msg given to OnMessage is a view of the loop's buffers, valid only until
// OnMessage returns; Send copies what it cannot write at once, so msg may be
// reused as soon as Send returns.
//
// # Flow control: what is owed is never dropped
//
// Two ways to send, for two kinds of bytes:
//
//   - Send and SendRaw follow Workerman: each connection's send queue is
//     bounded by MaxSendBufferSize; reaching it calls OnBufferFull, and a
//     message that finds the queue full is dropped, reported to OnError as
//     ErrSendBufferFull (at most once a second per connection, with the
//     count) and counted in Stats (DroppedFull): never silently.
//     OnBufferDrain follows once the queue is written out.
//     Worker.Backpressure stops reading, and delivering input already read,
//     while the queue is above half of MaxSendBufferSize.
//   - Write is for what a protocol owes its peer (responses, replies,
//     frames): it never drops for a full queue. Above the high mark the
//     connection is not read, and its input already read is not delivered,
//     until the queue has drained to an eighth; what was already owed may
//     take the queue past the limit. A producer on another goroutine calls
//     WaitWritable before each Write, and so waits for a slow peer as
//     net/http's Write does. Write fails (ErrConnClosed) only once the
//     connection is closing, and then nothing more goes out.
//
// The HTTP and WebSocket packages use Write: a slow or stalled client gets
// every response and frame, or, if it reads nothing for a timeout, the
// connection ends with a logged reason.
//
// # End of stream
//
// When the peer ends its side of the stream, herd answers what it had
// received before (OnMessage runs for it, and the send queue is written),
// then closes the connection. A reply that another goroutine is still
// making goes out too where the callback said so with Conn.Hold: the
// connection stays open, reading nothing, until the Release. Without a
// Hold, a reply sent after that is dropped, as in Workerman. A Handler
// that is an EndHandler decides itself (a proxy passes the end on with
// Conn.CloseWrite, a half-close, and goes on forwarding the other way).
//
// A TCP stream's input is its in-band bytes, as read(2) gives them without
// SO_OOBINLINE: an urgent byte (MSG_OOB) is left out and the bytes around
// it are delivered in order. Linux keeps one urgent byte at a time: one
// sent before another the reader had not reached yet comes in band.
//
// # Outbound connections and proxies
//
// A loop dials out with Loop.Dial (Workerman's AsyncTcpConnection): the
// connection is a Conn like an accepted one, served on that loop by the
// Dialer's callbacks. Pipe joins two connections both ways (Workerman's
// pipe) with backpressure each way, half-closes and aborts passed on, and
// optionally splice(2). Package balancer builds a load balancer on them.
//
// # Faults
//
// A panic in a callback, or in the Protocol's Input or Decode, closes that
// connection with ErrPanic (logged, and given to OnError); the loop serves
// the others. A packet that never completes holds at most MaxPackageSize
// plus one read buffer before it is refused.
//
// # Stopping
//
// Run serves until its context ends or Shutdown is called. Shutdown stops
// accepting, answers what connections have already sent, flushes, closes,
// and runs OnWorkerStop on each loop; RunAll does the same on SIGINT or
// SIGTERM for several workers.
package herd
