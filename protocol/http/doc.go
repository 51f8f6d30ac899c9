// Package herdhttp (at protocol/http) serves HTTP/1.1 on a herd.Worker, on the event loops: no
// goroutine per connection, and no allocation per request on the hot path.
//
//	w := &herd.Worker{Addr: "tcp://127.0.0.1:8080", ReusePort: true}
//	s := &http.Server{Handler: func(w *http.ResponseWriter, r *http.Request) {
//		w.Header().Set("Content-Type", "text/plain")
//		w.Write([]byte("Hello, World!"))
//	}}
//	if err := s.Attach(w); err != nil { ... }
//	log.Fatal(herd.RunAll(ctx, w))
//
// A standard net/http Handler (a ServeMux with "GET /items/{id}" patterns,
// a router, middleware) runs through Bridge, off the loop in a bounded pool.
//
// On a worker with TLS (herd.Worker.TLS), Request.TLS is the session's
// state (version, cipher suite, SNI, ALPN, client certificates under
// mutual TLS) and a bridged handler finds the same in r.TLS, as under
// net/http's server; both are nil without TLS.
//
// # The threading rule
//
// A Handler runs on the loop that owns the connection and must not block.
// The Request and every []byte it returns are views of the connection's
// buffers, valid only until the handler returns: copy what you keep (the
// String helpers do). A handler that needs slow work calls w.Async, hands w
// (and copies of what it needs from r) to a goroutine, and returns; the
// goroutine writes the response and calls w.End. ResponseWriter methods are
// then safe from that goroutine (one goroutine at a time). Responses leave
// in request order whatever order handlers finish in: a response waits
// behind the open responses of earlier pipelined requests. At most
// MaxInFlight (16) requests of one connection wait for their responses;
// beyond that the server stops reading that connection until they drain.
// No timeout bounds a response waiting for End: an async handler (or a
// bridged net/http handler) that never finishes pins its connection, and
// the responses behind it, until the client goes away.
//
// # Framing and what is rejected
//
// The parser is strict, as RFC 9112 asks of a server that may sit behind
// other HTTP processors (request smuggling). A request may arrive split at
// any byte or many to one read (pipelining); a complete request is parsed in
// place in the read buffer, and only an unfinished tail is copied.
// These are answered with the status shown, and the connection is closed
// after the answer (and the responses before it) have gone out:
//
//   - 400: a bare LF as a line ending anywhere in the head, a chunk line or
//     the trailers (policy: CRLF is required, bare LF is rejected rather
//     than tolerated); a request line that is not method SP target SP
//     version (a single SP each), a method that is not a token, a target
//     with bytes outside 0x21-0x7E or a fragment, or in the wrong form
//     (origin-form "/...", absolute-form "scheme://host...", authority-form
//     for CONNECT only, "*" for OPTIONS only); a version that is not
//     "HTTP/" DIGIT "." DIGIT; a field line starting with SP or HTAB
//     (obs-fold); a field name that is empty, has whitespace before the
//     colon or any non-token byte; a field value with a control character
//     other than HTAB; an HTTP/1.1 request without exactly one Host field,
//     or any request with several, or a Host value that is not uri-host
//     [":" port] (an IP-literal in brackets of hex digits, ":" and ".", or
//     reg-name / IPv4 characters: unreserved, %XX and sub-delims; the port
//     all digits; an empty value is allowed); Content-Length that is not all digits,
//     overflows int64, is empty, or has several values (repeated fields or
//     a comma list) that differ (identical ones are accepted);
//     Transfer-Encoding together with Content-Length;
//     Transfer-Encoding in an HTTP/1.0 request; Transfer-Encoding whose
//     final coding is not chunked, that names chunked twice, or is empty;
//     an invalid chunk size (no hex digit, or over 2^63-1), chunk
//     extension syntax (";" token ["=" token / quoted-string], with
//     optional whitespace), a chunk line over 4 KiB, chunk data not
//     followed by CRLF, and a malformed trailer field.
//   - 501: Transfer-Encoding with other codings before the final chunked
//     ("gzip, chunked"): no coding but chunked is implemented.
//   - 505: a version whose major number is not 1 (HTTP/2.0, HTTP/0.9 as
//     "HTTP/0.9"). HTTP/1.x with x > 1 is served as HTTP/1.1.
//   - 417: an Expect field other than "100-continue".
//   - 431: request line and header fields over MaxHeaderBytes (default
//     16 KiB), or trailer fields over MaxHeaderBytes.
//   - 413: a body over MaxBodyBytes (default 8 MiB): with Content-Length,
//     decided from the header before any of the body is read (an absurd
//     length never allocates); chunked, as soon as a chunk size takes the
//     total over.
//   - 408: a request whose header section is not complete HeaderTimeout
//     (default 10 s) after its first byte; a body that stalls for
//     IdleTimeout.
//
// Empty lines before a request line are ignored. Trailer fields are checked
// like header fields and dropped. A handler that panics gets a 500 if its
// response has not started, else its connection is aborted; this holds
// after Async too (the response is finished then, and a later End from the
// goroutine does nothing).
//
// # Connections
//
// HTTP/1.1 connections stay open unless a request says "Connection:
// close" (the response then says so too and the connection closes after
// it) or the handler sets "Connection: close". HTTP/1.0 connections close
// after each response unless the request says "Connection: keep-alive"
// (the response then says it too). Between requests, a connection idle for
// IdleTimeout (default 60 s) is closed. Both timeouts are checked by one
// sweep per loop, a quarter of the shorter timeout apart: no timer per
// request.
//
// Closing writes out what is queued first (herd.Conn.Close). A connection
// the server has closed (for a timeout, an error, or Connection: close)
// whose send queue then makes no progress for the worker's StopTimeout — a
// client that does not read — is aborted by herd's Close, so it cannot be
// kept open forever.
//
// "Expect: 100-continue" on an HTTP/1.1 request with a body gets "HTTP/1.1
// 100 Continue" once the header is read and before the body arrives, unless
// the body is over the limit, which gets the 413 instead.
//
// # Responses
//
// The body is buffered and sent when the handler returns (or at End) with
// its Content-Length; the Date field comes from a cache formatted at most
// once a second. Answers to HEAD carry the Content-Length a GET would get
// and no body. 1xx, 204 and 304 responses carry no body and no length.
// Flush streams: Transfer-Encoding: chunked for HTTP/1.1 (ended by the last
// chunk at End), the end of the connection for HTTP/1.0, or the handler's
// own Content-Length.
//
// A Content-Length set by the handler is what the response declares, and
// no more body than that is ever sent: the Write that would exceed it
// writes nothing and returns ErrContentLength (http.ErrContentLength
// through Bridge), as net/http does. A body shorter than declared goes out
// with the declared length and the connection is closed after it, so the
// client sees a short body rather than a desynchronized connection. In
// both cases the connection closes after the response. No Content-Type is added by a herd Handler; Bridge
// sniffs one as net/http does.
//
// # Upgrades
//
// A handler that answers 101 calls w.Upgrade with a Stream: once the 101 has
// gone out, the connection's bytes (including those already received behind
// the request) go to Stream.OnData on the loop, and Stream.OnClose runs when
// it closes. The 101 waits behind the responses to earlier pipelined
// requests; a Stream that implements StreamStarter learns in OnStart when
// the 101 has been handed to the connection, and sends its first bytes
// then. The websocket package is built on it. A WriteHeader(101) without
// Upgrade is not an upgrade: it sends a 101 status line, and the
// connection goes on with HTTP.
package herdhttp
