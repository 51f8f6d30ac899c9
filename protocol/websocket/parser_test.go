package websocket

import (
	"bytes"
	"encoding/binary"
	"math/rand"
	"testing"
	"unicode/utf8"
)

// mixedStream holds the cases a parser must get right however the stream
// is cut: small and extended lengths, empty messages, a fragmented text
// message with a code point cut between fragments and control frames in
// between, and a close frame followed by bytes that must be ignored.
func mixedStream() ([]byte, []string) {
	rng := rand.New(rand.NewSource(1))
	big := randomText(rng, 65600)[:65600] // 64-bit length
	for !utf8.Valid(big) {
		big = big[:len(big)-1]
	}
	mid := make([]byte, 300) // 16-bit length
	rng.Read(mid)
	var s []byte
	s = append(s, text("hello")...)
	s = append(s, clientFrame(true, 0, OpBinary, mid)...)
	s = append(s, clientFrame(true, 0, OpText, nil)...)
	s = append(s, clientFrame(false, 0, OpText, []byte("κό\xcf"))...) // σ cut in two
	s = append(s, clientFrame(true, 0, OpPing, []byte("p1"))...)
	s = append(s, clientFrame(false, 0, OpContinuation, []byte("\x83με "))...)
	s = append(s, clientFrame(false, 0, OpContinuation, nil)...)
	s = append(s, clientFrame(true, 0, OpPong, []byte("p2"))...)
	s = append(s, clientFrame(true, 0, OpContinuation, []byte("end"))...)
	s = append(s, clientFrame(true, 0, OpText, big)...)
	s = append(s, clientFrame(false, 0, OpBinary, mid[:100])...)
	s = append(s, clientFrame(true, 0, OpContinuation, mid[100:])...)
	s = append(s, closeFrameFor(StatusNormalClosure, "bye")...)
	s = append(s, text("ignored after close")...)
	var r recorder
	r.onMessage(OpText, []byte("hello"))
	r.onMessage(OpBinary, mid)
	r.onMessage(OpText, nil)
	r.onPing([]byte("p1"))
	r.onPong([]byte("p2"))
	r.onMessage(OpText, []byte("κόσμε end"))
	r.onMessage(OpText, big)
	r.onMessage(OpBinary, mid)
	r.onClose(1000, []byte("bye"))
	return s, r.events
}

func TestParserAnySplit(t *testing.T) {
	stream, events := mixedStream()
	want := verdict{events: joinLines(events)}
	check := func(name string, cuts []int) {
		t.Helper()
		if got := parseChunks(stream, cuts, -1, false); got != want {
			t.Fatalf("%s: got %q (code %d), want %q", name, got.events, got.code, want.events)
		}
	}
	check("whole", nil)
	// Every cut point of a two-way split, over the first 400 bytes (every
	// header and the frames around the fragmented message) and then in
	// steps, the big message included.
	for i := 1; i < len(stream); i++ {
		if i > 400 && i%499 != 0 && i < len(stream)-200 {
			continue
		}
		check("split", []int{i})
	}
	check("byte by byte", ones(len(stream), 1))
	check("by 7", ones(len(stream)/7+1, 7))
	rng := rand.New(rand.NewSource(2))
	for i := 0; i < 60; i++ {
		check("random", randomCuts(rng, len(stream)))
	}
}

func joinLines(s []string) string {
	return string(bytes.Join(func() [][]byte {
		b := make([][]byte, len(s))
		for i := range s {
			b[i] = []byte(s[i])
		}
		return b
	}(), []byte("\n")))
}

func TestParserViolations(t *testing.T) {
	long := make([]byte, 126)
	len64 := []byte{0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4}
	cases := []struct {
		name   string
		stream []byte
		code   StatusCode
		limit  int64
	}{
		{"unmasked", []byte{0x81, 0x02, 'h', 'i'}, 1002, -1},
		{"rsv1 without extension", clientFrame(true, rsv1Bit, OpText, []byte("x")), 1002, -1},
		{"rsv2", clientFrame(true, rsv2Bit, OpText, []byte("x")), 1002, -1},
		{"rsv3", clientFrame(true, rsv3Bit, OpBinary, nil), 1002, -1},
		{"reserved opcode 3", clientFrame(true, 0, 3, nil), 1002, -1},
		{"reserved opcode 7", clientFrame(true, 0, 7, nil), 1002, -1},
		{"reserved control opcode 0xb", clientFrame(true, 0, 0xb, nil), 1002, -1},
		{"reserved control opcode 0xf", clientFrame(true, 0, 0xf, []byte("x")), 1002, -1},
		{"ping over 125", clientFrame(true, 0, OpPing, long), 1002, -1},
		{"close over 125", clientFrame(true, 0, OpClose, long), 1002, -1},
		{"fragmented ping", clientFrame(false, 0, OpPing, nil), 1002, -1},
		{"continuation first", clientFrame(true, 0, OpContinuation, []byte("x")), 1002, -1},
		{"text inside fragmented", cat(clientFrame(false, 0, OpText, []byte("a")), text("b")), 1002, -1},
		{"binary inside fragmented", cat(clientFrame(false, 0, OpBinary, []byte("a")), clientFrame(true, 0, OpBinary, nil)), 1002, -1},
		{"64-bit length top bit", len64, 1002, -1},
		{"close 1 byte", clientFrame(true, 0, OpClose, []byte{3}), 1002, -1},
		{"close 1005", closeFrameFor(1005, ""), 1002, -1},
		{"close 1006", closeFrameFor(1006, ""), 1002, -1},
		{"close 1015", closeFrameFor(1015, ""), 1002, -1},
		{"close 1004", closeFrameFor(1004, ""), 1002, -1},
		{"close 999", closeFrameFor(999, ""), 1002, -1},
		{"close 2999", closeFrameFor(2999, ""), 1002, -1},
		{"close 5000", closeFrameFor(5000, ""), 1002, -1},
		{"close bad reason", closeFrameFor(1000, "\xff"), 1007, -1},
		{"bad utf8 text", text("a\xc3\x28"), 1007, -1},
		{"surrogate", text("\xed\xa0\x80"), 1007, -1},
		{"truncated code point at end", text("ab\xe2\x82"), 1007, -1},
		{"bad utf8 across fragments", cat(clientFrame(false, 0, OpText, []byte("ok\xe2")), clientFrame(true, 0, OpContinuation, []byte("(("))), 1007, -1},
		{"incomplete at message end", cat(clientFrame(false, 0, OpText, []byte("ok\xe2\x82")), clientFrame(true, 0, OpContinuation, nil)), 1007, -1},
		{"too big single", clientFrame(true, 0, OpBinary, make([]byte, 101)), 1009, 100},
		{"too big fragmented", cat(clientFrame(false, 0, OpBinary, make([]byte, 60)), clientFrame(true, 0, OpContinuation, make([]byte, 41))), 1009, 100},
		{"too big announced only", []byte{0x82, 0xff, 0, 0, 0, 1, 0, 0, 0, 0, 1, 2, 3, 4}, 1009, 1 << 20},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			whole := parseChunks(tc.stream, nil, tc.limit, false)
			if whole.code != tc.code {
				t.Fatalf("code %d, want %d (events %q)", whole.code, tc.code, whole.events)
			}
			if bytewise := parseChunks(tc.stream, ones(len(tc.stream), 1), tc.limit, false); bytewise != whole {
				t.Fatalf("byte by byte: %+v, whole: %+v", bytewise, whole)
			}
		})
	}
	// Valid close codes pass.
	for _, code := range []StatusCode{1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3999, 4000, 4999} {
		if v := parseChunks(closeFrameFor(code, "ok"), nil, -1, false); v.code != 0 {
			t.Errorf("close code %d rejected with %d", code, v.code)
		}
	}
	if v := parseChunks(clientFrame(true, 0, OpClose, nil), nil, -1, false); v.events != "close 1005 " {
		t.Errorf("empty close: %q", v.events)
	}
}

func cat(bs ...[]byte) []byte { return bytes.Join(bs, nil) }

// A 1 MiB message whole and in 64 KiB fragments, at the limit and over it.
func TestParserLargeMessages(t *testing.T) {
	rng := rand.New(rand.NewSource(3))
	msg := randomText(rng, 1<<20)[:1<<20]
	for !utf8.Valid(msg) {
		msg = msg[:len(msg)-1]
	}
	single := clientFrame(true, 0, OpText, msg)
	var frag []byte
	for off := 0; off < len(msg); off += 64 << 10 {
		end := min(off+64<<10, len(msg))
		op := OpContinuation
		if off == 0 {
			op = OpText
		}
		frag = append(frag, clientFrame(end == len(msg), 0, op, msg[off:end])...)
	}
	var r recorder
	r.onMessage(OpText, msg)
	want := verdict{events: r.events[0]}
	for _, stream := range [][]byte{single, frag} {
		if got := parseChunks(stream, nil, 1<<20, false); got != want {
			t.Fatalf("whole: %+v", got)
		}
		if got := parseChunks(stream, randomCuts(rng, len(stream)), 1<<20, false); got != want {
			t.Fatalf("random cuts: %+v", got)
		}
		if got := parseChunks(stream, ones(len(stream)/1500+1, 1500), int64(len(msg)-1), false); got.code != 1009 || got.events != "" {
			t.Fatalf("over the limit: %+v", got)
		}
	}
}

// The in-place path: a message whole in the buffer is delivered from it.
func TestParserZeroCopy(t *testing.T) {
	stream := text("in place please")
	var got []byte
	h := funcHandler{msg: func(op OpCode, d []byte) { got = d }}
	var p parser
	p.limit = -1
	if err := p.feed(stream, h); err != nil {
		t.Fatal(err)
	}
	if string(got) != "in place please" || &got[0] != &stream[6] {
		t.Fatalf("not delivered in place: %q", got)
	}
	if p.buf != nil {
		t.Fatal("parser kept a buffer")
	}
}

type funcHandler struct{ msg func(OpCode, []byte) }

func (h funcHandler) onMessage(op OpCode, d []byte) bool { h.msg(op, d); return true }
func (h funcHandler) onPing([]byte) bool                 { return true }
func (h funcHandler) onPong([]byte) bool                 { return true }
func (h funcHandler) onClose(StatusCode, []byte) bool    { return true }

func TestUnmask(t *testing.T) {
	rng := rand.New(rand.NewSource(4))
	key := [4]byte{1, 2, 3, 4}
	for n := 0; n < 200; n++ {
		b := make([]byte, n)
		rng.Read(b)
		want := append([]byte(nil), b...)
		for i := range want {
			want[i] ^= key[i&3]
		}
		// In pieces, carrying the key position.
		got := append([]byte(nil), b...)
		pos, off := 0, 0
		for off < n {
			k := min(n-off, 1+rng.Intn(40))
			pos = unmask(got[off:off+k], key, pos)
			off += k
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("n=%d: wrong", n)
		}
	}
}

func TestUTF8Incremental(t *testing.T) {
	rng := rand.New(rand.NewSource(5))
	pieces := [][]byte{[]byte("a"), []byte("é"), []byte("κόσμε"), []byte("😀"), []byte("\xed\x9f\xbf"), []byte("\xf4\x8f\xbf\xbf"),
		{0xff}, {0xc0, 0x80}, {0xed, 0xa0, 0x80}, {0xf4, 0x90, 0x80, 0x80}, {0xe0, 0x80, 0x80}, {0x80}, {0xe2, 0x82}, {0xf0, 0x9f}}
	for i := 0; i < 20000; i++ {
		var s []byte
		for j := rng.Intn(6); j >= 0; j-- {
			s = append(s, pieces[rng.Intn(len(pieces))]...)
		}
		var st utf8State
		ok := true
		rest := s
		for len(rest) > 0 && ok {
			k := 1 + rng.Intn(len(rest))
			ok = st.feed(rest[:k])
			rest = rest[k:]
		}
		ok = ok && st.complete()
		if ok != utf8.Valid(s) {
			t.Fatalf("%x: incremental %v, utf8.Valid %v", s, ok, !ok)
		}
	}
	// Fail fast: an impossible prefix is rejected before the message ends.
	var st utf8State
	if st.feed([]byte("ok\xf0\x80")) {
		t.Fatal("overlong 4-byte prefix accepted")
	}
}

func TestHeaderEncoding(t *testing.T) {
	for _, n := range []int{0, 125, 126, 65535, 65536} {
		f := appendFrame(nil, false, OpBinary, make([]byte, n))
		got := parseServerFrames(t, f)
		if len(got) != 1 || len(got[0].payload) != n || !got[0].fin || got[0].op != OpBinary {
			t.Fatalf("n=%d: %+v", n, got)
		}
	}
	_ = binary.BigEndian
}
