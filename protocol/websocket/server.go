package websocket

import (
	"bytes"
	"compress/flate"
	"crypto/sha1"
	"encoding/base64"
	"fmt"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/seed358e4494/herd"
	herdhttp "github.com/seed358e4494/herd/protocol/http"
)

// Defaults for zero-valued Server fields.
const (
	DefaultMaxMessageSize = 16 << 20
	DefaultCloseTimeout   = 5 * time.Second
	DefaultMaxQueuedBytes = 1 << 20
)

// Server upgrades HTTP requests to WebSocket connections and serves them.
// Configure its fields before the first Upgrade; they must not change
// after. The zero value accepts same-origin (or Origin-less) clients, no
// subprotocol, no compression, messages up to DefaultMaxMessageSize.
type Server struct {
	// Subprotocols the server speaks, most preferred first. The first of
	// them that the client offers is chosen; none offered or none in
	// common: the connection has no subprotocol.
	Subprotocols []string
	// CheckOrigin decides whether to accept the request's Origin; false
	// answers 403. Nil accepts requests without an Origin header and those
	// whose Origin host equals the Host header, which protects browsers'
	// users from cross-site WebSocket hijacking.
	CheckOrigin func(r *herdhttp.Request) bool
	// MaxMessageSize bounds a message, compressed and decompressed; a peer
	// that announces or inflates a larger one is failed with 1009. It also
	// bounds what is buffered per connection. Zero means
	// DefaultMaxMessageSize; negative means no limit.
	MaxMessageSize int
	// PingInterval makes the server ping each connection this often. Zero
	// means no pings.
	PingInterval time.Duration
	// PongTimeout closes (without a close handshake: OnClose gets 1006) a
	// connection whose peer has sent nothing, pong or otherwise, for this
	// long. It is checked every PingInterval, or every PongTimeout/4
	// without pings, so it fires up to one period late. Zero means never.
	PongTimeout time.Duration
	// CloseTimeout bounds how long Conn.Close waits for the peer's close
	// frame before closing the TCP connection anyway. Zero means
	// DefaultCloseTimeout.
	CloseTimeout time.Duration
	// Compression accepts permessage-deflate (RFC 7692) when the client
	// offers it. Messages of 64 bytes or more are then sent compressed.
	Compression bool
	// NoContextTakeover answers every deflate offer with both
	// server_no_context_takeover and client_no_context_takeover: each
	// message is compressed on its own, compressors are pooled instead of
	// kept per connection, and a PreparedMessage is compressed once for
	// all peers. Costs compression ratio; saves about 1 MiB per connection
	// that keeps its context (see the package doc).
	NoContextTakeover bool
	// CompressionLevel is the flate level of outgoing messages. Zero means
	// flate.BestSpeed, whose compressor resets cheaply between messages;
	// values outside flate.HuffmanOnly..flate.BestCompression too.
	CompressionLevel int
	// MaxQueuedBytes is the slow-consumer bound. A message pushed to a
	// connection (written from another goroutine, a timer or Broadcast)
	// while its send queue holds this much or more is not sent: the
	// connection is closed with StatusPolicyViolation and the reason "slow
	// consumer", the write returns ErrSlowConsumer, OnClose gets that code,
	// and SlowConsumers counts it. A peer that does not keep up thus never
	// bloats the server or holds up the others. Replies, written from
	// OnMessage while the loop delivers input, are never refused: reading
	// pauses instead while the queue is high (herd.Conn.Write). Zero means
	// DefaultMaxQueuedBytes; negative means no bound.
	MaxQueuedBytes int

	// OnOpen runs once the handshake is accepted, inside the HTTP handler
	// that called Upgrade (r is valid only during the call). Frames
	// written from it go out right after the 101 response.
	OnOpen func(c *Conn, r *herdhttp.Request)
	// OnMessage receives each complete message, OpText (valid UTF-8) or
	// OpBinary, decompressed. data is valid only until OnMessage returns.
	OnMessage func(c *Conn, op OpCode, data []byte)
	// OnClose runs once, after the TCP connection has closed, with the
	// peer's close code and reason (StatusNoStatusReceived if its close
	// frame had no code), or the code the server failed the connection
	// with, or StatusAbnormalClosure when it ended without a close frame.
	OnClose func(c *Conn, code StatusCode, reason string)

	slowConsumers atomic.Uint64
}

// SlowConsumers counts the connections closed because a message was pushed
// to them while their send queue was over MaxQueuedBytes.
func (s *Server) SlowConsumers() uint64 { return s.slowConsumers.Load() }

func (s *Server) maxQueued() int {
	switch {
	case s.MaxQueuedBytes == 0:
		return DefaultMaxQueuedBytes
	case s.MaxQueuedBytes < 0:
		return -1
	}
	return s.MaxQueuedBytes
}

// websocketGUID is the constant of RFC 6455, section 1.3.
const websocketGUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

// AcceptKey computes Sec-WebSocket-Accept for a Sec-WebSocket-Key:
// base64(SHA-1(key + GUID)).
func AcceptKey(key string) string {
	h := sha1.New()
	h.Write([]byte(key))
	h.Write([]byte(websocketGUID))
	return base64.StdEncoding.EncodeToString(h.Sum(nil))
}

// Attach makes the worker a WebSocket-only server: every request on any
// path is upgraded through s, and the rest of herd's HTTP server applies
// (timeouts, limits). To serve WebSocket on some routes only, call Upgrade
// from your own herdhttp.Handler instead. Attach fails as
// herdhttp.Server's does (a udp:// worker, a Protocol, OnMessage or
// OnPacket set, another server attached already).
func (s *Server) Attach(w *herd.Worker) error {
	hs := &herdhttp.Server{Handler: func(w *herdhttp.ResponseWriter, r *herdhttp.Request) { s.Upgrade(w, r) }}
	if err := hs.Attach(w); err != nil {
		return fmt.Errorf("websocket: %w", err)
	}
	return nil
}

// Upgrade answers a WebSocket handshake request and, if it is valid,
// makes the connection a WebSocket connection served by s. Call it from
// the handler itself (on the loop), not after Async. It reports whether
// the connection was upgraded; if not, it has written the error response:
//
//   - 405 for a method other than GET;
//   - 400 for HTTP/1.0, a Connection header without the "upgrade" token,
//     or a missing or malformed Sec-WebSocket-Key (not the base64 of 16
//     bytes, or given twice);
//   - 426 (Upgrade Required, with Upgrade: websocket) when the Upgrade
//     header lacks the "websocket" token, as RFC 9110 prescribes for a
//     plain request on an endpoint that only speaks WebSocket;
//   - 426 with Sec-WebSocket-Version: 13 for any other protocol version;
//   - 403 when the origin check rejects the request.
func (s *Server) Upgrade(w *herdhttp.ResponseWriter, r *herdhttp.Request) bool {
	if string(r.Method()) != "GET" {
		w.Header().Set("Allow", "GET")
		return reject(w, 405, "method must be GET")
	}
	if !r.ProtoAtLeast(1, 1) {
		return reject(w, 400, "HTTP/1.1 or later required")
	}
	if !r.HasToken("Upgrade", "websocket") {
		w.Header().Set("Upgrade", "websocket")
		w.Header().Set("Connection", "Upgrade")
		w.Header().Set("Sec-WebSocket-Version", "13")
		return reject(w, 426, "not a WebSocket handshake: Upgrade: websocket expected")
	}
	if !r.HasToken("Connection", "upgrade") {
		return reject(w, 400, "Connection header lacks the upgrade token")
	}
	if v := slices.Collect(r.HeaderValues("Sec-WebSocket-Version")); len(v) != 1 || string(bytes.TrimSpace(v[0])) != "13" {
		w.Header().Set("Sec-WebSocket-Version", "13")
		return reject(w, 426, "unsupported WebSocket version")
	}
	keys := slices.Collect(r.HeaderValues("Sec-WebSocket-Key"))
	if len(keys) != 1 || !validKey(bytes.TrimSpace(keys[0])) {
		return reject(w, 400, "missing or malformed Sec-WebSocket-Key")
	}
	if s.CheckOrigin != nil {
		if !s.CheckOrigin(r) {
			return reject(w, 403, "origin not allowed")
		}
	} else if !sameOrigin(r) {
		return reject(w, 403, "cross-origin request")
	}

	h := w.Header()
	h.Set("Upgrade", "websocket")
	h.Set("Connection", "Upgrade")
	h.Set("Sec-WebSocket-Accept", AcceptKey(string(bytes.TrimSpace(keys[0]))))
	sub := s.chooseSubprotocol(slices.Collect(r.HeaderValues("Sec-WebSocket-Protocol")))
	if sub != "" {
		h.Set("Sec-WebSocket-Protocol", sub)
	}
	var dp *deflateParams
	if s.Compression {
		if resp, p, ok := negotiateDeflate(slices.Collect(r.HeaderValues("Sec-WebSocket-Extensions")), s.NoContextTakeover); ok {
			h.Set("Sec-WebSocket-Extensions", resp)
			dp = &p
		}
	}
	w.WriteHeader(101)

	hc := r.Conn()
	c := s.newConn(hc, hc.Loop(), sub, dp)
	// Frames written from now on wait in c until the 101 has gone out
	// (after any earlier pipelined response still open): OnStart.
	w.Upgrade(stream{c})
	if s.OnOpen != nil {
		s.OnOpen(c, r)
	}
	if period := s.keepalivePeriod(); period > 0 {
		c.lastRx = time.Now()
		c.keepalive = c.loop.Every(period, c.tick)
	}
	return true
}

// keepalivePeriod is how often a connection's keepalive tick runs; zero
// when there is none.
func (s *Server) keepalivePeriod() time.Duration {
	if s.PingInterval > 0 {
		return s.PingInterval
	}
	return s.PongTimeout / 4
}

// newConn makes the Conn of an accepted handshake.
func (s *Server) newConn(hc link, l loopLink, sub string, dp *deflateParams) *Conn {
	c := &Conn{srv: s, c: hc, loop: l, subprotocol: sub}
	c.p.limit = int64(s.MaxMessageSize)
	if s.MaxMessageSize == 0 {
		c.p.limit = DefaultMaxMessageSize
	} else if s.MaxMessageSize < 0 {
		c.p.limit = -1
	}
	if dp != nil {
		c.p.inflate = &inflater{takeover: !dp.clientNoTakeover}
		level := s.CompressionLevel
		if level == 0 || level < flate.HuffmanOnly || level > flate.BestCompression {
			level = flate.BestSpeed
		}
		c.defl = &deflater{takeover: !dp.serverNoTakeover, level: level}
	}
	return c
}

func (s *Server) closeTimeout() time.Duration {
	if s.CloseTimeout > 0 {
		return s.CloseTimeout
	}
	return DefaultCloseTimeout
}

func reject(w *herdhttp.ResponseWriter, code int, msg string) bool {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(code)
	w.Write([]byte("websocket: " + msg + "\n"))
	return false
}

// validKey reports whether key is the base64 of 16 bytes.
func validKey(key []byte) bool {
	if len(key) != 24 {
		return false
	}
	var b [18]byte
	n, err := base64.StdEncoding.Strict().Decode(b[:], key)
	return err == nil && n == 16
}

// sameOrigin accepts a request without Origin, or whose Origin's host
// equals its Host header.
func sameOrigin(r *herdhttp.Request) bool {
	origin := r.Header("Origin")
	if origin == nil {
		return true
	}
	u, err := url.Parse(string(origin))
	if err != nil {
		return false
	}
	return strings.EqualFold(u.Host, string(bytes.TrimSpace(r.Host())))
}

func (s *Server) chooseSubprotocol(offered [][]byte) string {
	for _, want := range s.Subprotocols {
		for _, v := range offered {
			for _, e := range bytes.Split(v, []byte{','}) {
				if string(bytes.TrimSpace(e)) == want {
					return want
				}
			}
		}
	}
	return ""
}

// deflateParams is the outcome of permessage-deflate negotiation.
type deflateParams struct {
	serverNoTakeover bool // the server resets its compressor per message
	clientNoTakeover bool // the client does: no window kept for it
}

// negotiateDeflate accepts the first permessage-deflate offer it can and
// returns the response's extension value.
//
// Go's compress/flate always uses a 32 KiB window: an offer with
// server_max_window_bits below 15 (the server must not use a larger window)
// is declined, and the next offer tried. client_max_window_bits only says
// the client can limit its window; the server does not ask it to, since it
// inflates with any window up to 32 KiB. Unknown or repeated parameters, and
// malformed values, decline the offer, as RFC 7692 requires.
func negotiateDeflate(headers [][]byte, noTakeover bool) (string, deflateParams, bool) {
	for _, h := range headers {
		for _, offer := range bytes.Split(h, []byte{','}) {
			params := bytes.Split(offer, []byte{';'})
			if !strings.EqualFold(string(bytes.TrimSpace(params[0])), "permessage-deflate") {
				continue
			}
			var p deflateParams
			var seen [4]bool
			serverBits := 0
			ok := true
			for _, param := range params[1:] {
				name, value, hasValue := bytes.Cut(param, []byte{'='})
				name = bytes.TrimSpace(name)
				value = bytes.TrimSpace(value)
				if len(value) >= 2 && value[0] == '"' && value[len(value)-1] == '"' {
					value = value[1 : len(value)-1]
				}
				i := -1
				switch strings.ToLower(string(name)) {
				case "server_no_context_takeover":
					i, p.serverNoTakeover = 0, true
					ok = ok && !hasValue
				case "client_no_context_takeover":
					i, p.clientNoTakeover = 1, true
					ok = ok && !hasValue
				case "server_max_window_bits":
					i = 2
					bits, valid := windowBits(value)
					ok = ok && hasValue && valid && bits == 15
					serverBits = bits
				case "client_max_window_bits":
					i = 3
					if hasValue {
						_, valid := windowBits(value)
						ok = ok && valid
					}
				}
				if i < 0 || seen[i] {
					ok = false
				} else {
					seen[i] = true
				}
			}
			if !ok {
				continue
			}
			if noTakeover {
				p.serverNoTakeover, p.clientNoTakeover = true, true
			}
			resp := "permessage-deflate"
			if p.serverNoTakeover {
				resp += "; server_no_context_takeover"
			}
			if p.clientNoTakeover {
				resp += "; client_no_context_takeover"
			}
			if serverBits == 15 {
				resp += "; server_max_window_bits=15"
			}
			return resp, p, true
		}
	}
	return "", deflateParams{}, false
}

// windowBits parses a window_bits value: 8 to 15, digits only.
func windowBits(v []byte) (int, bool) {
	if len(v) == 0 || len(v) > 2 || v[0] == '0' {
		return 0, false
	}
	n, err := strconv.Atoi(string(v))
	return n, err == nil && n >= 8 && n <= 15
}
