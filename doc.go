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
//     only; elsewhere herd falls back to Accept and logs it.
//   - AcceptShared: one listening socket in every loop's poller, registered
//     with EPOLLEXCLUSIVE on Linux so one loop wakes per connection. Cheap and
//     cache-friendly, but the kernel favours the most recent waiter: work
//     concentrates on a few loops.
//   - AcceptRoundRobin, AcceptLeastConns: one dispatcher goroutine accepts and
//     hands each connection to a loop, in turn or to the least loaded. Even
//     for long-lived connections, at the cost of one hand-off per connection.
//
// # The threading rule
//
// Callbacks (OnConnect, OnMessage, OnClose, timers, Loop.Post) run on the
// goroutine of the loop that owns the connection, one at a time, and must
// not block: hand slow work to a goroutine. Every method of Conn, Loop and
// Timer is safe from any goroutine, except Loop.Now, the loop's clock, which
// is for its callbacks. Conn.Send writes directly when nothing
// is queued, so a reply sent from a worker goroutine costs no hop through the
// loop.
//
// The msg given to OnMessage is a view of the loop's buffers, valid only until
// OnMessage returns; Send copies what it cannot write at once, so msg may be
// reused as soon as Send returns.
//
// # Flow control
//
// Each connection's send queue is bounded by MaxSendBufferSize. Reaching it
// calls OnBufferFull; a Send that finds the queue full is dropped, reported
// to OnError as ErrSendBufferFull and counted in Stats: never silently.
// OnBufferDrain follows once the queue is written out. Worker.Backpressure
// instead stops reading from a connection while its queue is high, which is
// what a proxy or a server with slow consumers wants.
//
// # End of stream
//
// When the peer ends its side of the stream, herd answers what it had
// received before (OnMessage runs for it, and the send queue is written),
// then closes the connection: a reply that another goroutine sends after that
// is dropped, as in Workerman.
//
// # Stopping
//
// Run serves until its context ends or Shutdown is called. Shutdown stops
// accepting, answers what connections have already sent, flushes, closes,
// and runs OnWorkerStop on each loop; RunAll does the same on SIGINT or
// SIGTERM for several workers.
package herd
