// Package websocket serves RFC 6455 WebSocket connections on herd's event
// loops, with permessage-deflate (RFC 7692).
//
//	s := &websocket.Server{
//		OnMessage: func(c *websocket.Conn, op websocket.OpCode, data []byte) {
//			c.WriteMessage(op, data)
//		},
//	}
//	w := &herd.Worker{Addr: "tcp://127.0.0.1:9000", Accept: herd.AcceptLeastConns}
//	s.Attach(w) // or call s.Upgrade from a herdhttp.Handler, on the routes you choose
//	log.Fatal(w.Run(context.Background()))
//
// The handshake goes through herd's HTTP server (protocol/http); once the
// 101 response is out, the connection's bytes go to this package's frame
// parser, which is fed whatever each read returned and keeps its place
// between reads. A message whose frame lies whole in the read buffer is
// unmasked and delivered in place, without a copy; only frames that straddle
// reads and fragmented messages are copied, into a pooled per-connection
// buffer that goes back to the pool after each message.
//
// # The threading rule
//
// OnOpen, OnMessage and OnClose run on the loop that owns the connection
// and must not block: hand slow work to a goroutine. Every Conn method
// (WriteText, WriteBinary, WriteMessage, WritePrepared, Ping, Close,
// Context) is safe from any goroutine. Each frame is encoded into one buffer
// and handed to herd in one herd.Conn.Write call, so frames from concurrent
// writers never interleave, and none is dropped. The data given to
// OnMessage is valid only until it returns.
//
// # Slow consumers
//
// Replies written from OnMessage are never refused: while the client is
// behind, herd stops reading from it, so a client that sends faster than it
// reads is slowed down. A message pushed from elsewhere (another goroutine,
// a timer, Broadcast) to a connection whose send queue holds
// Server.MaxQueuedBytes or more is not sent: the connection is closed with
// 1008 (policy violation, reason "slow consumer"), the write returns
// ErrSlowConsumer and Server.SlowConsumers counts it. That decision is made
// before the message is compressed, so with permessage-deflate the stream
// never skips a frame.
//
// # What is validated, and the close code each violation gets
//
// A violation fails the connection: the server sends a close frame with
// the code below, then closes the TCP connection once that frame is
// flushed (herd half-closes and waits briefly for the peer's end, so the
// peer reads the close frame rather than a reset). OnClose gets the same
// code.
//
//	1002 protocol error
//	     unmasked client frame; RSV2 or RSV3 set; RSV1 set without
//	     permessage-deflate, or on a control or continuation frame;
//	     reserved opcode (3-7, 0xB-0xF); control frame with a payload over
//	     125 bytes or without FIN; continuation frame with no message
//	     started; text or binary frame inside a fragmented message; 64-bit
//	     length with the top bit set; close frame with a 1-byte payload;
//	     close code outside 1000-1003, 1007-1014, 3000-4999 (1005, 1006,
//	     1015 and the unassigned ones are refused)
//	1007 invalid data
//	     text message (after inflating, if compressed) or close reason that
//	     is not UTF-8; an uncompressed text message is checked piece by
//	     piece as it arrives, across frames and reads, and fails as soon as
//	     a byte makes it invalid; compressed payload that is not valid
//	     deflate data
//	1009 message too big
//	     a message over MaxMessageSize (default 16 MiB): decided from the
//	     frame headers before a byte of it is buffered; for a compressed
//	     message the compressed size counts too, and inflating stops as
//	     soon as the output passes the limit, so a decompression bomb costs
//	     at most MaxMessageSize bytes
//
// Frame lengths need not use the shortest encoding (accepted, as most
// implementations do). Text that the application sends is not checked.
//
// # Closing
//
// The peer's close frame is answered with a close frame carrying the same
// code (none if it sent none), then the TCP connection is closed; bytes
// after a close frame are ignored. Conn.Close(code, reason) sends a close
// frame and waits for the peer's, at most CloseTimeout (default 5 s), before
// closing anyway; messages that arrive meanwhile are not delivered, pings are
// not answered. OnClose runs once the TCP connection has closed, with the
// peer's code (1005 if its frame had none), the code the server failed the
// connection with, or 1006 if the connection ended without a close frame
// (peer vanished, PongTimeout, CloseTimeout).
//
// # Keepalive
//
// PingInterval sends a ping on that period; PongTimeout aborts a
// connection from which nothing at all (pong or otherwise) has arrived for
// that long. Both run on a per-connection loop timer.
//
// # permessage-deflate
//
// With Server.Compression, the first acceptable permessage-deflate offer is
// accepted. Go's compress/flate only has 32 KiB windows: an offer that
// requires server_max_window_bits below 15 is declined (the next offer is
// tried; none acceptable means no compression), server_max_window_bits=15
// is echoed, and client_max_window_bits is accepted without asking the
// client to shrink its window, since any window up to 32 KiB inflates. An
// offer with an unknown, repeated or malformed parameter is declined.
//
// Messages of 64 bytes or more are sent compressed (RSV1 on their single
// frame), shorter ones plain. Context takeover is honoured both ways unless
// negotiated off:
//
//   - Outgoing, with takeover: the connection keeps its own flate.Writer,
//     made on its first compressed message. Go's writer is large, about
//     1.2 MiB at BestSpeed (0.8 MiB at other levels); it goes back to a
//     pool when the connection closes. With server_no_context_takeover
//     (asked by the client, or always with Server.NoContextTakeover) each
//     message borrows a pooled writer, reset first.
//   - Incoming, with takeover: inflating is done per message by a pooled
//     flate reader (about 44 KiB, held only while inflating) primed with the
//     peer's last 32 KiB of output, which the connection keeps in a 64 KiB
//     buffer. With client_no_context_takeover, nothing is kept.
//
// Server.NoContextTakeover answers every offer with both
// no_context_takeover parameters, so an idle compressed connection holds no
// deflate memory at all, at some cost in ratio.
//
// # Broadcast
//
// PreparedMessage and Broadcast encode a message once and hand the same
// frame to every connection. For compressed peers without server context
// takeover, the compressed frame is also made once; peers whose
// compressor keeps its context get the message compressed per connection,
// against their own history.
//
// # Limits and defaults
//
// MaxMessageSize 16 MiB (negative: none), CloseTimeout 5 s, no pings, no
// compression, compression level flate.BestSpeed. A connection holds a few
// hundred bytes of parser state between messages; the buffers of a message
// in progress are bounded by MaxMessageSize. The origin check accepts
// requests without Origin or whose Origin host is the Host header, unless
// CheckOrigin says otherwise.
package websocket
