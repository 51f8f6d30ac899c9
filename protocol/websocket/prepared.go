package websocket

import (
	"compress/flate"
	"sync"
)

// PreparedMessage is a message encoded once and sent to many connections,
// as a broadcast does: the frame is built once and handed to each
// connection's SendRaw as it is.
//
// With permessage-deflate, a peer whose server side has no context
// takeover (NoContextTakeover, or the client asked for
// server_no_context_takeover) gets a compressed frame that is also made
// once, on first use, at flate.BestSpeed. A peer whose compressor keeps its
// context needs the message compressed against its own history: it gets a
// per-connection compression, as WriteMessage would do. Safe for concurrent
// use.
type PreparedMessage struct {
	op    OpCode
	data  []byte
	frame []byte // uncompressed frame

	once     sync.Once
	deflated []byte // compressed frame, made on first use
}

// NewPreparedMessage encodes data as a message of type op (OpText or
// OpBinary). It copies data.
func NewPreparedMessage(op OpCode, data []byte) (*PreparedMessage, error) {
	if op != OpText && op != OpBinary {
		return nil, ErrDataOpCode
	}
	frame := appendFrame(make([]byte, 0, maxServerHeaderLen+len(data)), false, op, data)
	return &PreparedMessage{op: op, data: frame[len(frame)-len(data):], frame: frame}, nil
}

// deflatedFrame is the message compressed without context, framed.
func (pm *PreparedMessage) deflatedFrame() []byte {
	pm.once.Do(func() {
		var w *flate.Writer
		var sink sliceWriter
		buf := compressTo(make([]byte, maxServerHeaderLen, maxServerHeaderLen+len(pm.data)/2+64), pm.data, flate.BestSpeed, &w, &sink, false)
		n := len(buf) - maxServerHeaderLen
		frame := buf[maxServerHeaderLen-serverHeaderLen(n):]
		putHeader(frame, true, true, pm.op, n)
		pm.deflated = frame
	})
	return pm.deflated
}

// WritePrepared sends a prepared message.
func (c *Conn) WritePrepared(pm *PreparedMessage) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if err := c.admitLocked(); err != nil {
		return err
	}
	switch {
	case c.defl == nil || len(pm.data) < minCompressSize:
		return c.sendLocked(pm.frame)
	case !c.defl.takeover:
		return c.sendLocked(pm.deflatedFrame())
	}
	return c.writeLocked(pm.op, pm.data)
}

// Broadcast sends one message to every connection in conns, encoding it
// once (see PreparedMessage), and reports to how many it was sent or
// queued. It may be called from any goroutine; the frames go out on the
// caller's goroutine, a connection at a time. A slow consumer (see
// Server.MaxQueuedBytes) is closed rather than sent to, so it holds
// neither the others nor memory.
func Broadcast(conns []*Conn, op OpCode, data []byte) (int, error) {
	pm, err := NewPreparedMessage(op, data)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, c := range conns {
		if c.WritePrepared(pm) == nil {
			n++
		}
	}
	return n, nil
}
