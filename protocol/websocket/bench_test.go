package websocket

import (
	"bytes"
	"testing"
)

type discardTransport struct{ n int }

func (d *discardTransport) Write(b []byte) (int, error) { d.n += len(b); return len(b), nil }
func (d *discardTransport) SendQueueBytes() int         { return 0 }
func (d *discardTransport) Close()                      {}
func (d *discardTransport) Post(func()) bool            { return true }
func (d *discardTransport) CloseNoWait()                {}
func (d *discardTransport) Abort()                      {}

// benchEcho runs frames of one message through parser, OnMessage echo and
// frame writer, in memory.
func benchEcho(b *testing.B, msg []byte, dp *deflateParams, fragments int) {
	s := &Server{OnMessage: func(c *Conn, op OpCode, data []byte) { c.WriteMessage(op, data) }}
	dt := &discardTransport{}
	c := s.newConn(dt, &fakeLoop{}, "", dp)
	c.started.Store(true)
	var wire []byte
	if dp != nil {
		z := (&clientDeflater{}).compress(msg)
		wire = clientFrame(true, rsv1Bit, OpText, z)
	} else if fragments > 1 {
		step := len(msg) / fragments
		for i := 0; i < fragments; i++ {
			op := OpContinuation
			if i == 0 {
				op = OpText
			}
			wire = append(wire, clientFrame(i == fragments-1, 0, op, msg[i*step:(i+1)*step])...)
		}
	} else {
		wire = clientFrame(true, 0, OpText, msg)
	}
	buf := make([]byte, len(wire))
	b.SetBytes(int64(len(msg)))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		copy(buf, wire) // unmasking works in place
		c.onData(buf)
	}
	if dt.n == 0 {
		b.Fatal("nothing echoed")
	}
}

// BenchmarkEcho: a 64-byte masked text frame through parser, handler and
// writer.
func BenchmarkEcho(b *testing.B) {
	benchEcho(b, bytes.Repeat([]byte("x"), 64), nil, 1)
}

func BenchmarkEcho16K(b *testing.B) {
	benchEcho(b, bytes.Repeat([]byte("herd "), 16<<10/5), nil, 1)
}

func BenchmarkEchoFragmented16K(b *testing.B) {
	benchEcho(b, bytes.Repeat([]byte("herd"), 16<<10/4), nil, 4)
}

func BenchmarkEchoDeflate1K(b *testing.B) {
	benchEcho(b, bytes.Repeat([]byte("herd websocket "), 1024/15), &deflateParams{serverNoTakeover: true, clientNoTakeover: true}, 1)
}

func BenchmarkEchoDeflate1KContextTakeover(b *testing.B) {
	benchEcho(b, bytes.Repeat([]byte("herd websocket "), 1024/15), &deflateParams{clientNoTakeover: true}, 1)
}

// BenchmarkParseSplit: a 4 KiB message arriving in 100-byte reads.
func BenchmarkParseSplit(b *testing.B) {
	wire := clientFrame(true, 0, OpBinary, make([]byte, 4096))
	buf := make([]byte, len(wire))
	var p parser
	p.limit = -1
	h := funcHandler{msg: func(OpCode, []byte) {}}
	b.SetBytes(4096)
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		copy(buf, wire)
		for off := 0; off < len(buf); off += 100 {
			p.feed(buf[off:min(off+100, len(buf))], h)
		}
	}
}

func BenchmarkUnmask(b *testing.B) {
	buf := make([]byte, 4096)
	b.SetBytes(4096)
	for i := 0; i < b.N; i++ {
		unmask(buf, [4]byte{1, 2, 3, 4}, i&3)
	}
}

func BenchmarkBroadcast100(b *testing.B) {
	conns := make([]*Conn, 100)
	for i := range conns {
		conns[i] = (&Server{}).newConn(&discardTransport{}, &fakeLoop{}, "", nil)
		conns[i].started.Store(true)
	}
	msg := bytes.Repeat([]byte("x"), 256)
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		Broadcast(conns, OpText, msg)
	}
}
