// Package balancer is a TCP load balancer on herd's loops: Workerman's
// AsyncTcpConnection-and-pipe balancer, with what HAProxy users expect of
// one.
//
// Attach a Balancer to a herd.Worker, and each connection the worker
// accepts is forwarded to one of the Backends: the client's loop dials the
// backend (herd.Loop.Dial: non-blocking, no goroutine) while the client is
// not read, then joins the two with herd.Pipe, which forwards each way
// with backpressure (a peer that does not read stops its counterpart
// being read), passes a half-close on and turns an abort on one side into
// a reset on the other. With Splice, the bytes go through kernel pipes
// with splice(2) and never through user space.
//
// Choosing a backend: Algorithm is one of Random, RoundRobin,
// WeightedRoundRobin (nginx's smooth weighted round robin), LeastConns,
// SourceHash (weighted rendezvous hashing of the client's address: a
// client keeps its backend, and taking one of N backends away moves only
// its own clients, about 1/N) and PowerOfTwo (two random choices, the
// less loaded).
//
// Health: a failed connect is retried on another backend (Retries), and
// Fall failures in a row mark the backend down; active checks
// (HealthCheck: a TCP connect, or an HTTP GET that must answer 2xx or
// 3xx, every Interval, with Rise and Fall) run on the worker's loop 0 and
// bring it back. A backend back up takes a growing share over SlowStart.
// SetDraining stops new connections to a backend while its open ones go
// on. With ProxyProtocol, backends get the client's address in a PROXY
// protocol header (v1 or v2), as HAProxy's send-proxy sends it.
//
// Stopping: a graceful stop of the worker (Shutdown, Run's context,
// herd.RunAll's first signal, an upgrade after its grace) accepts no more
// and lets proxied connections finish, as HAProxy's soft stop does; those
// left when the stop's context ends are reset on both sides (see
// herd.Pipe). A session whose backend is still connecting when the stop
// begins is in flight too: the connect goes on (retried on another backend
// if it fails), and the session is piped and stops softly once it
// completes; one still connecting when the stop's context ends is reset,
// and the backend not counted as failed. A client the worker's
// IdleTimeout finds idle while its backend is still connecting is closed
// (an end of stream: no answer was begun).
//
// Stats gives per-backend figures (state, sessions, bytes each way,
// connect errors, failed checks, time down); the prometheus module
// exports them (BalancerCollector). examples/balancer is a command on
// this package, and bench/README.md measures it against HAProxy.
package balancer
