//go:build linux || darwin || freebsd

package gateway

import (
	"bytes"
	"reflect"
	"sync"
	"sync/atomic"

	"github.com/seed358e4494/herd"
	"github.com/seed358e4494/herd/protocol"
	"github.com/seed358e4494/herd/protocol/websocket"
)

// A Client is a connection as the gateway writes to it: a WebSocket
// connection (WebSocket), or a herd connection with the worker's protocol
// (Raw).
type Client interface {
	// Herd is the underlying connection.
	Herd() *herd.Conn
	// deliver writes m, encoded once for all the receivers of a fan-out.
	// A receiver that is gone or too slow costs the sender nothing: its
	// connection's own policy applies.
	deliver(m *message)
}

// WebSocket makes a WebSocket connection a gateway client: messages go out
// as text frames, prepared once per fan-out (websocket.PreparedMessage).
// A receiver that does not keep up is closed (by its server, 1008) or
// skipped, as the Gateway's SlowConsumer says, rather than holding the
// others back.
func WebSocket(c *websocket.Conn) Client { return wsClient{c} }

type wsClient struct{ c *websocket.Conn }

func (w wsClient) Herd() *herd.Conn { return w.c.Herd() }

func (w wsClient) deliver(m *message) {
	if pm, err := m.prepared(); err == nil {
		w.c.WritePrepared(pm)
	}
}

// Raw makes a herd connection a gateway client: each message is encoded
// with p (once per fan-out; nil sends the bytes as they are) and sent with
// SendRaw. A receiver whose queue is at the Gateway's MaxQueuedBytes is
// closed or skipped, as its SlowConsumer says; below that, SendRaw itself
// drops a message that does not fit the worker's send queue (counted in
// the worker's Stats).
func Raw(c *herd.Conn, p protocol.Protocol) Client { return rawClient{c, p} }

type rawClient struct {
	c *herd.Conn
	p protocol.Protocol
}

func (r rawClient) Herd() *herd.Conn { return r.c }

func (r rawClient) deliver(m *message) { r.c.SendRaw(m.encoded(r.p)) }

// message is one payload on its way to one or many clients, with the
// encodings made for them, each made once.
type message struct {
	data []byte

	pmOnce sync.Once
	pm     *websocket.PreparedMessage
	pmErr  error

	enc atomic.Pointer[encoding] // Raw clients' encoding, set by the first
}

type encoding struct {
	t reflect.Type
	b []byte
}

// newMessage copies data: the senders' buffers are theirs again once the
// call returns, and the message travels on to other goroutines.
func newMessage(data []byte) *message { return &message{data: bytes.Clone(data)} }

func (m *message) prepared() (*websocket.PreparedMessage, error) {
	m.pmOnce.Do(func() { m.pm, m.pmErr = websocket.NewPreparedMessage(websocket.OpText, m.data) })
	return m.pm, m.pmErr
}

// encoded is data encoded with p: made once for the first protocol type
// asked (loops that race may each make it once; one wins), and for another
// type (one gateway serving two protocols) each time. Protocols of one
// type are taken to encode alike.
func (m *message) encoded(p protocol.Protocol) []byte {
	if p == nil {
		return m.data
	}
	t := reflect.TypeOf(p)
	if e := m.enc.Load(); e != nil {
		if e.t == t {
			return e.b
		}
		return p.Encode(nil, m.data)
	}
	e := &encoding{t: t, b: p.Encode(nil, m.data)}
	m.enc.CompareAndSwap(nil, e)
	return e.b
}
