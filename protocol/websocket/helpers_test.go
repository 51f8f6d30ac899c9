package websocket

import (
	"bytes"
	"compress/flate"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"io"
	"math/rand"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/seed358e4494/herd"
)

// clientFrame builds a masked frame as a client sends it. rsv holds the
// RSV bits as they sit in the first byte (0x40 for RSV1).
func clientFrame(fin bool, rsv byte, op OpCode, payload []byte) []byte {
	return clientFrameKey(fin, rsv, op, payload, [4]byte{0x37, 0xfa, 0x21, 0x3d})
}

func clientFrameKey(fin bool, rsv byte, op OpCode, payload []byte, key [4]byte) []byte {
	b0 := byte(op) | rsv
	if fin {
		b0 |= finBit
	}
	b := []byte{b0}
	switch n := len(payload); {
	case n <= 125:
		b = append(b, maskBit|byte(n))
	case n <= 0xffff:
		b = append(b, maskBit|126)
		b = binary.BigEndian.AppendUint16(b, uint16(n))
	default:
		b = append(b, maskBit|127)
		b = binary.BigEndian.AppendUint64(b, uint64(n))
	}
	b = append(b, key[:]...)
	start := len(b)
	b = append(b, payload...)
	for i := range payload {
		b[start+i] ^= key[i&3]
	}
	return b
}

func text(s string) []byte { return clientFrame(true, 0, OpText, []byte(s)) }

func closeFrameFor(code StatusCode, reason string) []byte {
	p := binary.BigEndian.AppendUint16(nil, uint16(code))
	return clientFrame(true, 0, OpClose, append(p, reason...))
}

// recorder is a frameHandler that writes down what it gets.
type recorder struct {
	events []string
}

func (r *recorder) onMessage(op OpCode, data []byte) bool {
	r.events = append(r.events, fmt.Sprintf("%v %d %x", op, len(data), hashOf(data)))
	return true
}
func (r *recorder) onPing(p []byte) bool {
	r.events = append(r.events, "ping "+string(p))
	return true
}
func (r *recorder) onPong(p []byte) bool {
	r.events = append(r.events, "pong "+string(p))
	return true
}
func (r *recorder) onClose(code StatusCode, reason []byte) bool {
	r.events = append(r.events, fmt.Sprintf("close %d %s", code, reason))
	return true
}

func hashOf(b []byte) uint32 { return crc32.ChecksumIEEE(b) }

// verdict is what a parser made of a stream: its events and the code it
// failed with (0: none).
type verdict struct {
	events string
	code   StatusCode
}

// parseChunks feeds stream to a fresh parser cut at the given lengths
// (the remainder goes last). The stream is copied first: unmasking
// happens in place.
func parseChunks(stream []byte, cuts []int, limit int64, deflate bool) verdict {
	data := append([]byte(nil), stream...)
	p := parser{limit: limit}
	if deflate {
		p.inflate = &inflater{takeover: true}
	}
	var r recorder
	var code StatusCode
	feed := func(b []byte) {
		if err := p.feed(b, &r); err != nil && code == 0 {
			code = err.code
		}
	}
	for _, n := range cuts {
		n = min(n, len(data))
		feed(data[:n])
		data = data[n:]
	}
	if len(data) > 0 {
		feed(data)
	}
	return verdict{strings.Join(r.events, "\n"), code}
}

// randomCuts splits n bytes into random chunk lengths, mostly small.
func randomCuts(rng *rand.Rand, n int) []int {
	var cuts []int
	for n > 0 {
		c := 1 + rng.Intn(min(n, []int{3, 17, 200, 5000}[rng.Intn(4)]))
		cuts = append(cuts, c)
		n -= c
	}
	return cuts
}

func ones(n, size int) []int {
	c := make([]int, n)
	for i := range c {
		c[i] = size
	}
	return c
}

// fakeTransport stands in for a herd.Conn.
type fakeTransport struct {
	posted   []func() // kept: the tests here run no loop
	mu       sync.Mutex
	out      bytes.Buffer
	closed   bool
	noLinger bool // closed with CloseNoWait
	aborted  bool
}

func (t *fakeTransport) Write(b []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed || t.aborted {
		return 0, herd.ErrConnClosed
	}
	t.out.Write(b)
	return len(b), nil
}

func (t *fakeTransport) SendQueueBytes() int { return 0 }
func (t *fakeTransport) Close()              { t.mu.Lock(); t.closed = true; t.mu.Unlock() }
func (t *fakeTransport) CloseNoWait() {
	t.mu.Lock()
	t.closed, t.noLinger = true, true
	t.mu.Unlock()
}
func (t *fakeTransport) Abort()             { t.mu.Lock(); t.aborted = true; t.mu.Unlock() }
func (t *fakeTransport) Post(f func()) bool { t.posted = append(t.posted, f); return true }

func (t *fakeTransport) take() []byte {
	t.mu.Lock()
	defer t.mu.Unlock()
	b := append([]byte(nil), t.out.Bytes()...)
	t.out.Reset()
	return b
}

// fakeLoop stands in for the connection's loop: timers are not started.
type fakeLoop struct{}

func (l *fakeLoop) AfterFunc(time.Duration, func()) *herd.Timer { return nil }
func (l *fakeLoop) Every(time.Duration, func()) *herd.Timer     { return nil }

// testConn is a Conn over a fakeTransport, its handshake done.
func testConn(s *Server, dp *deflateParams) (*Conn, *fakeTransport) {
	ft := &fakeTransport{}
	c := s.newConn(ft, &fakeLoop{}, "", dp)
	c.started.Store(true)
	return c, ft
}

// serverFrame is a frame the server sent, as a client reads it.
type serverFrame struct {
	fin     bool
	rsv1    bool
	op      OpCode
	payload []byte
}

// readServerFrame reads one unmasked frame.
func readServerFrame(r io.Reader) (serverFrame, error) {
	var h [2]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return serverFrame{}, err
	}
	f := serverFrame{fin: h[0]&finBit != 0, rsv1: h[0]&rsv1Bit != 0, op: OpCode(h[0] & 0xf)}
	if h[1]&maskBit != 0 {
		return f, fmt.Errorf("server frame is masked")
	}
	n := uint64(h[1] & 0x7f)
	switch n {
	case 126:
		var b [2]byte
		if _, err := io.ReadFull(r, b[:]); err != nil {
			return f, err
		}
		n = uint64(binary.BigEndian.Uint16(b[:]))
	case 127:
		var b [8]byte
		if _, err := io.ReadFull(r, b[:]); err != nil {
			return f, err
		}
		n = binary.BigEndian.Uint64(b[:])
	}
	f.payload = make([]byte, n)
	_, err := io.ReadFull(r, f.payload)
	return f, err
}

func parseServerFrames(t testing.TB, b []byte) []serverFrame {
	t.Helper()
	r := bytes.NewReader(b)
	var fs []serverFrame
	for r.Len() > 0 {
		f, err := readServerFrame(r)
		if err != nil {
			t.Fatalf("bad server frame: %v", err)
		}
		fs = append(fs, f)
	}
	return fs
}

func closeCodeOf(f serverFrame) StatusCode {
	if f.op != OpClose || len(f.payload) < 2 {
		return 0
	}
	return StatusCode(binary.BigEndian.Uint16(f.payload))
}

// clientDeflater compresses as browsers do: one flate writer for the whole
// connection (context takeover) or a fresh one per message, each message
// ended by Flush with the 0x00 0x00 0xff 0xff tail removed.
type clientDeflater struct {
	takeover bool
	buf      bytes.Buffer
	w        *flate.Writer
}

func (d *clientDeflater) compress(p []byte) []byte {
	if d.w == nil || !d.takeover {
		d.w, _ = flate.NewWriter(&d.buf, flate.DefaultCompression)
	}
	d.buf.Reset()
	d.w.Write(p)
	d.w.Flush()
	out := append([]byte(nil), d.buf.Bytes()...)
	if !bytes.HasSuffix(out, deflateTail) {
		panic("flush without the sync marker")
	}
	return out[:len(out)-4]
}

// clientInflater decompresses server messages as a browser does: with the
// history of earlier messages when the server keeps its context.
type clientInflater struct {
	takeover bool
	hist     []byte
	r        io.ReadCloser // reused (flate.Resetter)
}

func (d *clientInflater) inflate(p []byte) ([]byte, error) {
	var dict []byte
	if d.takeover {
		dict = d.hist
	}
	src := io.MultiReader(bytes.NewReader(p), bytes.NewReader(inflateTail))
	if d.r == nil {
		d.r = flate.NewReaderDict(src, dict)
	} else if err := d.r.(flate.Resetter).Reset(src, dict); err != nil {
		return nil, err
	}
	out, err := io.ReadAll(d.r)
	if err != nil {
		return nil, err
	}
	d.hist = append(d.hist, out...)
	if len(d.hist) > windowSize {
		d.hist = d.hist[len(d.hist)-windowSize:]
	}
	return out, nil
}

func randomText(rng *rand.Rand, n int) []byte {
	words := []string{"herd ", "loop ", "κόσμε ", "😀 ", "websocket ", "frame ", "日本語 ", "x"}
	var b []byte
	for len(b) < n {
		b = append(b, words[rng.Intn(len(words))]...)
	}
	return b
}
