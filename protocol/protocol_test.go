package protocol_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"

	"github.com/seed358e4494/herd/protocol"
)

var (
	_ protocol.Protocol = protocol.Text{}
	_ protocol.Protocol = protocol.Frame{}
	_ fmt.Stringer      = protocol.Text{}
	_ fmt.Stringer      = protocol.Frame{}
)

// noLimit stands for a Worker whose MaxPackageSize no test input reaches.
const noLimit = 1 << 30

func TestTextInput(t *testing.T) {
	tests := []struct {
		buf  string
		want int
	}{
		{"", 0},
		{"abc", 0},
		{"abc\r", 0},
		{"\n", 1},
		{"abc\n", 4},
		{"abc\r\n", 5},
		{"abc\ndef\n", 4},    // the first of several
		{"abc\ndef", 4},      // a whole packet and part of the next
		{"\n\n\n", 1},        // empty lines are packets
		{"a\x00b\xff\n", 5},  // any bytes but "\n"
		{"\r\r\n\r\n", 3},    // "\r" alone ends nothing
		{"abc\nd\re\r\n", 4}, // the first line ends at the first "\n"
		{"x\n" + "y\n", 2},   // concatenated lines
		{strings.Repeat("z", 70000) + "\n", 70001},
	}
	for _, tt := range tests {
		buf := []byte(tt.buf)
		keep := bytes.Clone(buf)
		n, err := protocol.Text{}.Input(buf)
		if err != nil || n != tt.want {
			t.Errorf("Text.Input(%q) = %d, %v; want %d, nil", trunc(tt.buf), n, err, tt.want)
		}
		if !bytes.Equal(buf, keep) {
			t.Errorf("Text.Input(%q) modified its argument", trunc(tt.buf))
		}
	}
}

func TestTextDecode(t *testing.T) {
	tests := []struct{ packet, want string }{
		{"abc\n", "abc"},
		{"abc\r\n", "abc"},
		{"\n", ""},
		{"\r\n", ""},
		{"a\r\r\n", "a\r"}, // one "\r" only (Workerman's rtrim($buffer, "\r\n") strips both)
		{"a\rb\n", "a\rb"}, // "\r" inside a line is data
		{"\x00\xff\n", "\x00\xff"},
	}
	for _, tt := range tests {
		got := protocol.Text{}.Decode([]byte(tt.packet))
		if string(got) != tt.want {
			t.Errorf("Text.Decode(%q) = %q; want %q", tt.packet, got, tt.want)
		}
	}
}

func TestTextDecodeSubslice(t *testing.T) {
	// Decode returns a view of the packet: no copy per message.
	packet := []byte("hello\r\n")
	msg := protocol.Text{}.Decode(packet)
	if len(msg) == 0 || &msg[0] != &packet[0] {
		t.Fatalf("Text.Decode copied the packet")
	}
}

func TestTextEncode(t *testing.T) {
	tests := []struct{ dst, msg, want string }{
		{"", "", "\n"},
		{"", "hello", "hello\n"},
		{"prefix|", "hello", "prefix|hello\n"}, // appends, keeps dst
		{"", "a\r", "a\r\n"},                   // Encode does not escape; Decode strips that "\r"
	}
	for _, tt := range tests {
		var dst []byte
		if tt.dst != "" {
			dst = []byte(tt.dst)
		}
		got := protocol.Text{}.Encode(dst, []byte(tt.msg))
		if string(got) != tt.want {
			t.Errorf("Text.Encode(%q, %q) = %q; want %q", tt.dst, tt.msg, got, tt.want)
		}
	}
	if s := (protocol.Text{}).String(); s != "text" {
		t.Errorf("Text.String() = %q", s)
	}
}

func TestTextStream(t *testing.T) {
	// Several packets in one read, the last one partial; "\r\n" and "\n"
	// mixed.
	got := cutAll(protocol.Text{}, []byte("one\r\ntwo\n\nfour\r\nfi"), noLimit)
	want := result{msgs: []string{"one", "two", "", "four"}, rest: "fi"}
	if !got.equal(want) {
		t.Fatalf("got %v; want %v", got, want)
	}
	// The same stream one byte at a time.
	var s stream
	for _, b := range []byte("one\r\ntwo\n\nfour\r\nfi") {
		s.feed(protocol.Text{}, []byte{b}, noLimit)
	}
	if !s.result().equal(want) {
		t.Fatalf("byte by byte: got %v; want %v", s.result(), want)
	}
}

func TestFrameInput(t *testing.T) {
	tests := []struct {
		buf  []byte
		want int
	}{
		{nil, 0},
		{[]byte{0}, 0},
		{[]byte{0, 0}, 0},
		{[]byte{0, 0, 0}, 0}, // a bad header is not judged before it is whole
		{[]byte{0, 0, 0, 4}, 4},
		{[]byte{0, 0, 0, 9, 'h', 'e'}, 9}, // known length, more needed
		{[]byte{0, 0, 0, 9, 'h', 'e', 'l', 'l', 'o'}, 9}, // exactly one
		{[]byte{0, 0, 0, 6, 'h', 'i', 0, 0, 0, 4}, 6},    // the first of several
		{[]byte{0, 1, 0x11, 0x74}, 70004},                // big endian
		{[]byte{0x12, 0x34, 0x56, 0x78, 0}, 0x12345678},  // one byte of it here
		{append([]byte{0, 0, 0, 5}, "xyz"...), 5},        // header counts itself
		{[]byte{0, 0, 0, 4, 0, 0, 0, 1}, 4},              // next header's fault is the next call's
		{[]byte{0x7f, 0xff, 0xff, 0xff}, 0x7fffffff},     // fits an int everywhere
	}
	for _, tt := range tests {
		keep := bytes.Clone(tt.buf)
		n, err := protocol.Frame{}.Input(tt.buf)
		if err != nil || n != tt.want {
			t.Errorf("Frame.Input(% x) = %d, %v; want %d, nil", tt.buf, n, err, tt.want)
		}
		if !bytes.Equal(tt.buf, keep) {
			t.Errorf("Frame.Input(% x) modified its argument", tt.buf)
		}
	}

	// The largest header: on 64-bit the length itself, else the largest int.
	n, err := protocol.Frame{}.Input([]byte{0xff, 0xff, 0xff, 0xff})
	want := maxInt
	if strconv.IntSize == 64 {
		all := uint64(0xffffffff)
		want = int(all)
	}
	if err != nil || n != want {
		t.Errorf("Frame.Input(ff ff ff ff) = %d, %v; want %d", n, err, want)
	}
}

const maxInt = int(^uint(0) >> 1)

func TestFrameInputShortLength(t *testing.T) {
	// A total length below 4 cannot even hold the header. Workerman's Frame
	// returns it from input anyway (0 stalls the connection, 1 to 3 cut a
	// packet shorter than its header); herd calls the stream malformed.
	for length := uint32(0); length < protocol.FrameHeaderLen; length++ {
		buf := binary.BigEndian.AppendUint32(nil, length)
		buf = append(buf, "trailing"...)
		n, err := protocol.Frame{}.Input(buf)
		if !errors.Is(err, protocol.ErrFrameLength) {
			t.Errorf("Frame.Input(length %d) = %d, %v; want an error wrapping ErrFrameLength", length, n, err)
			continue
		}
		if n != 0 {
			t.Errorf("Frame.Input(length %d) = %d with its error; want 0", length, n)
		}
		if !strings.Contains(err.Error(), strconv.Itoa(int(length))) {
			t.Errorf("Frame.Input(length %d): error %q does not say the length", length, err)
		}
	}
}

func TestFrameEncode(t *testing.T) {
	// Workerman: pack('N', 4 + strlen($buffer)) . $buffer
	tests := []struct {
		dst, msg string
		want     []byte
	}{
		{"", "", []byte{0, 0, 0, 4}},
		{"", "hello", []byte{0, 0, 0, 9, 'h', 'e', 'l', 'l', 'o'}},
		{"ab", "c", []byte{'a', 'b', 0, 0, 0, 5, 'c'}}, // appends, keeps dst
		{"", "\x00\n\r\xff", []byte{0, 0, 0, 8, 0, '\n', '\r', 0xff}},
	}
	for _, tt := range tests {
		var dst []byte
		if tt.dst != "" {
			dst = []byte(tt.dst)
		}
		got := protocol.Frame{}.Encode(dst, []byte(tt.msg))
		if !bytes.Equal(got, tt.want) {
			t.Errorf("Frame.Encode(%q, %q) = % x; want % x", tt.dst, tt.msg, got, tt.want)
		}
	}

	big := bytes.Repeat([]byte{'x'}, 70000)
	got := protocol.Frame{}.Encode(nil, big)
	if !bytes.Equal(got[:4], []byte{0, 1, 0x11, 0x74}) || len(got) != 70004 || !bytes.Equal(got[4:], big) {
		t.Errorf("Frame.Encode(70000 bytes): header % x, length %d", got[:4], len(got))
	}
	if s := (protocol.Frame{}).String(); s != "frame" {
		t.Errorf("Frame.String() = %q", s)
	}
}

func TestFrameDecode(t *testing.T) {
	packet := []byte{0, 0, 0, 9, 'h', 'e', 'l', 'l', 'o'}
	msg := protocol.Frame{}.Decode(packet)
	if string(msg) != "hello" {
		t.Fatalf("Frame.Decode = %q; want hello", msg)
	}
	if &msg[0] != &packet[4] {
		t.Fatalf("Frame.Decode copied the packet")
	}
	if msg := (protocol.Frame{}).Decode([]byte{0, 0, 0, 4}); len(msg) != 0 {
		t.Fatalf("Frame.Decode(empty frame) = %q", msg)
	}
}

func TestFrameStream(t *testing.T) {
	f := protocol.Frame{}
	var wire []byte
	for _, m := range []string{"one", "", "three"} {
		wire = f.Encode(wire, []byte(m))
	}
	wire = append(wire, 0, 0, 0, 20, 'p') // part of a fourth
	want := result{msgs: []string{"one", "", "three"}, rest: "\x00\x00\x00\x14p"}
	if got := cutAll(f, wire, noLimit); !got.equal(want) {
		t.Fatalf("got %v; want %v", got, want)
	}
	var s stream
	for _, b := range wire {
		s.feed(f, []byte{b}, noLimit)
	}
	if !s.result().equal(want) {
		t.Fatalf("byte by byte: got %v; want %v", s.result(), want)
	}

	// A malformed header after good packets: the good ones are delivered,
	// then the stream stops.
	bad := append(f.Encode(nil, []byte("ok")), 0, 0, 0, 3, 'x')
	got := cutAll(f, bad, noLimit)
	if got.fail != failMalformed || !errors.Is(got.err, protocol.ErrFrameLength) || len(got.msgs) != 1 || got.msgs[0] != "ok" {
		t.Fatalf("malformed stream: got %v", got)
	}
}

func TestRoundTrip(t *testing.T) {
	msgs := []string{"", "a", "hello world", "tab\there", "\x00\x01\x02", strings.Repeat("long", 5000), "ünïcødé"}
	for _, p := range []protocol.Protocol{protocol.Text{}, protocol.Frame{}} {
		t.Run(fmt.Sprint(p), func(t *testing.T) {
			var wire []byte
			for _, m := range msgs {
				wire = p.Encode(wire, []byte(m))
			}
			got := cutAll(p, wire, noLimit)
			if !got.equal(result{msgs: msgs}) {
				t.Fatalf("round trip: got %v", got)
			}
			for _, m := range msgs {
				packet := p.Encode(nil, []byte(m))
				n, err := p.Input(packet)
				if err != nil || n != len(packet) {
					t.Fatalf("Input(Encode(%q)) = %d, %v; want %d", trunc(m), n, err, len(packet))
				}
				if d := p.Decode(packet); string(d) != m {
					t.Fatalf("Decode(Encode(%q)) = %q", trunc(m), trunc(string(d)))
				}
			}
		})
	}
}

func TestPackageLimit(t *testing.T) {
	// The stream cutter below applies MaxPackageSize as herd's loop does;
	// check that its reference agrees on the edges.
	tests := []struct {
		p     protocol.Protocol
		in    string
		limit int
		fail  failure
	}{
		{protocol.Text{}, "abcd\n", 5, failNone},
		{protocol.Text{}, "abcde\n", 5, failTooLarge},
		{protocol.Text{}, "abcd", 5, failNone}, // might still end in time
		{protocol.Text{}, "abcde", 5, failTooLarge},
		{protocol.Frame{}, "\x00\x00\x00\x08abcd", 8, failNone},
		{protocol.Frame{}, "\x00\x00\x00\x09ab", 8, failTooLarge}, // known at the header
		{protocol.Frame{}, "\x00\x00\x00\x02", 8, failMalformed},
	}
	for _, tt := range tests {
		got := cutAll(tt.p, []byte(tt.in), tt.limit)
		ref := reference(tt.p, []byte(tt.in), tt.limit)
		if got.fail != tt.fail || ref.fail != tt.fail {
			t.Errorf("%v %q limit %d: cutter %v, reference %v; want failure %d", tt.p, tt.in, tt.limit, got, ref, tt.fail)
		}
	}
}

// FuzzText feeds an arbitrary stream to Text, split at arbitrary points, and
// compares what comes out with a reference parser.
func FuzzText(f *testing.F) {
	f.Add([]byte("hello\nworld\r\n"), []byte{2, 0, 5}, uint16(0))
	f.Add([]byte("\n\n\r\n\r\r\n"), []byte{0}, uint16(0))
	f.Add([]byte("no newline at all"), []byte{}, uint16(0))
	f.Add([]byte("long line\nshort\n"), []byte{3, 3, 3}, uint16(6))
	f.Add([]byte("a\x00b\xff\n\xfe\r"), []byte{1, 1, 1, 1, 1, 1, 1}, uint16(3))
	f.Fuzz(func(t *testing.T, data, cuts []byte, limit uint16) {
		fuzzStream(t, protocol.Text{}, data, cuts, textLimit(limit))

		// Round trip: the lines of data are messages (a message cannot
		// hold "\n"); each comes back without a final "\r", which Decode
		// takes for part of a "\r\n" line ending.
		msgs := bytes.Split(data, []byte("\n"))
		want := make([]string, len(msgs))
		for i, m := range msgs {
			want[i] = string(bytes.TrimSuffix(m, []byte("\r")))
		}
		fuzzRoundTrip(t, protocol.Text{}, msgs, want, cuts)
	})
}

// FuzzFrame is FuzzText for Frame.
func FuzzFrame(f *testing.F) {
	hello := protocol.Frame{}.Encode(nil, []byte("hello"))
	f.Add(hello, []byte{1, 2}, uint16(0))
	f.Add(protocol.Frame{}.Encode(hello, nil), []byte{8}, uint16(9))
	f.Add([]byte{0, 0, 0, 2, 'x'}, []byte{0, 0}, uint16(0))
	f.Add([]byte{0, 0, 0, 0}, []byte{}, uint16(0))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 1, 2, 3}, []byte{3}, uint16(0))
	f.Add([]byte{0, 0, 0, 5, 'a', 0, 0, 0, 6, 'b', 'c', 0, 0}, []byte{4, 1, 0}, uint16(5))
	f.Fuzz(func(t *testing.T, data, cuts []byte, limit uint16) {
		// A MaxPackageSize below the header length makes every frame too
		// large; herd then reports either that or ErrFrameLength, depending
		// on how much of a bad header has arrived, which is not a property
		// worth pinning down. Keep the limit at 4 or more.
		fuzzStream(t, protocol.Frame{}, data, cuts, max(textLimit(limit), protocol.FrameHeaderLen))

		// Round trip: data cut where cuts say makes the messages.
		var msgs [][]byte
		rest := data
		for _, c := range cuts {
			k := min(int(c), len(rest))
			msgs = append(msgs, rest[:k])
			rest = rest[k:]
		}
		msgs = append(msgs, rest)
		want := make([]string, len(msgs))
		for i, m := range msgs {
			want[i] = string(m)
		}
		fuzzRoundTrip(t, protocol.Frame{}, msgs, want, cuts)
	})
}

// textLimit turns the fuzzer's limit into a MaxPackageSize: zero means none.
func textLimit(limit uint16) int {
	if limit == 0 {
		return noLimit
	}
	return int(limit)
}

// fuzzStream checks that the stream cut whole, byte by byte and in the chunks
// cuts describes gives what the reference parser gives.
func fuzzStream(t *testing.T, p protocol.Protocol, data, cuts []byte, limit int) {
	want := reference(p, data, limit)

	whole := cutAll(p, data, limit)
	if !whole.equal(want) {
		t.Fatalf("one read: got %v; reference %v", whole, want)
	}

	var s stream
	for _, chunk := range chunks(data, cuts) {
		s.feed(p, chunk, limit)
	}
	if got := s.result(); !got.equal(want) {
		t.Fatalf("reads of %v: got %v; reference %v", chunkSizes(data, cuts), got, want)
	}

	// Byte by byte rescans the buffered packet on every byte: keep it to
	// inputs small enough to stay fast.
	if len(data) <= 1024 {
		var s stream
		for i := range data {
			s.feed(p, data[i:i+1], limit)
		}
		if got := s.result(); !got.equal(want) {
			t.Fatalf("byte by byte: got %v; reference %v", got, want)
		}
	}
}

// fuzzRoundTrip encodes msgs, cuts the wire form in the chunks cuts
// describes, and expects want.
func fuzzRoundTrip(t *testing.T, p protocol.Protocol, msgs [][]byte, want []string, cuts []byte) {
	prefix := []byte("dst")
	wire := bytes.Clone(prefix)
	for _, m := range msgs {
		before := len(wire)
		wire = p.Encode(wire, m)
		if one := p.Encode(nil, m); !bytes.Equal(wire[before:], one) {
			t.Fatalf("Encode appended % x to a buffer, % x to nil", wire[before:], one)
		}
	}
	if !bytes.HasPrefix(wire, prefix) {
		t.Fatalf("Encode lost its dst: % x", wire[:len(prefix)])
	}
	wire = wire[len(prefix):]
	var s stream
	for _, chunk := range chunks(wire, cuts) {
		s.feed(p, chunk, noLimit)
	}
	if got := s.result(); !got.equal(result{msgs: want}) {
		t.Fatalf("round trip of %d messages: got %v; want %q", len(want), got, want)
	}
}

// chunks splits data into reads: each byte of cuts is the length of the next
// read less one (reads are never empty), and the rest is the last read.
func chunks(data, cuts []byte) [][]byte {
	var out [][]byte
	for _, c := range cuts {
		if len(data) == 0 {
			break
		}
		k := min(int(c)+1, len(data))
		out = append(out, data[:k])
		data = data[k:]
	}
	if len(data) > 0 {
		out = append(out, data)
	}
	return out
}

func chunkSizes(data, cuts []byte) []int {
	var sizes []int
	for _, c := range chunks(data, cuts) {
		sizes = append(sizes, len(c))
	}
	return sizes
}

type failure int

const (
	failNone      failure = iota
	failMalformed         // Input returned an error
	failTooLarge          // the packet exceeds the limit (herd's ErrPackageTooLarge)
)

// result is what a stream gave: its messages, the bytes still waiting for
// the rest of a packet, and how it failed, if it did.
type result struct {
	msgs []string
	rest string
	fail failure
	err  error
}

func (r result) equal(o result) bool {
	if r.fail != o.fail || len(r.msgs) != len(o.msgs) {
		return false
	}
	if r.fail == failNone && r.rest != o.rest {
		return false // after a failure the connection closes: rest is moot
	}
	for i := range r.msgs {
		if r.msgs[i] != o.msgs[i] {
			return false
		}
	}
	return true
}

func (r result) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "{%d msgs", len(r.msgs))
	for i, m := range r.msgs {
		if i == 8 {
			b.WriteString(" ...")
			break
		}
		fmt.Fprintf(&b, " %q", trunc(m))
	}
	fmt.Fprintf(&b, "; rest %q; fail %d", trunc(r.rest), r.fail)
	if r.err != nil {
		fmt.Fprintf(&b, " (%v)", r.err)
	}
	b.WriteString("}")
	return b.String()
}

// stream cuts packets out of reads as herd's loop does (loop.go, deliver):
// it appends each read to what is buffered, asks Input for the length of
// the next packet while whole packets are there, rejects packets over the
// limit, decodes, and keeps the remainder for the next read. Along the way
// it checks what Input and Decode promise.
type stream struct {
	buf  []byte
	msgs []string
	fail failure
	err  error
}

func (s *stream) feed(p protocol.Protocol, data []byte, limit int) {
	if s.fail != failNone {
		return // the connection is closed
	}
	s.buf = append(s.buf, data...)
	// Input and Decode must leave the buffer alone; check once per read
	// rather than per call, which would be quadratic in the read's size.
	all, keep := s.buf, bytes.Clone(s.buf)
	defer func() {
		if !bytes.Equal(all, keep) {
			panic(fmt.Sprintf("%v: Input or Decode modified the buffer % x", p, keep))
		}
	}()
	for len(s.buf) > 0 {
		n, err := p.Input(s.buf)
		if n < 0 {
			panic(fmt.Sprintf("%v.Input(% x) = %d", p, s.buf, n))
		}
		if err != nil {
			s.fail, s.err = failMalformed, err
			return
		}
		if n > limit || (n == 0 && len(s.buf) >= limit) {
			s.fail = failTooLarge
			return
		}
		if n > len(s.buf) {
			if _, ok := p.(protocol.Text); ok {
				panic(fmt.Sprintf("Text.Input(%q) = %d: a line's length is only known once it is whole", s.buf, n))
			}
			return // known length, more needed
		}
		if n == 0 {
			return
		}
		packet := s.buf[:n]
		if msg := wellFormed(p, packet); msg != "" {
			panic(fmt.Sprintf("%v.Input(% x) = %d: %s", p, s.buf, n, msg))
		}
		s.msgs = append(s.msgs, string(p.Decode(packet)))
		s.buf = s.buf[n:]
	}
}

func (s *stream) result() result {
	return result{msgs: s.msgs, rest: string(s.buf), fail: s.fail, err: s.err}
}

func cutAll(p protocol.Protocol, data []byte, limit int) result {
	var s stream
	s.feed(p, data, limit)
	return s.result()
}

// wellFormed says what is wrong with a packet Input reported whole, or "".
func wellFormed(p protocol.Protocol, packet []byte) string {
	switch p.(type) {
	case protocol.Text:
		if i := bytes.IndexByte(packet, '\n'); i != len(packet)-1 {
			return "a text packet must end at its first \"\\n\""
		}
	case protocol.Frame:
		if len(packet) < protocol.FrameHeaderLen {
			return "a frame shorter than its header"
		}
		if int64(binary.BigEndian.Uint32(packet)) != int64(len(packet)) {
			return "a frame whose header does not give its length"
		}
	}
	return ""
}

// reference parses a whole stream the plain way, without Input.
func reference(p protocol.Protocol, data []byte, limit int) result {
	var r result
	for len(data) > 0 {
		var n int
		switch p.(type) {
		case protocol.Text:
			i := bytes.IndexByte(data, '\n')
			if i < 0 {
				if len(data) >= limit {
					r.fail = failTooLarge
				}
				r.rest = string(data)
				return r
			}
			n = i + 1
			if n > limit {
				r.fail = failTooLarge
				return r
			}
			line := data[:i]
			if k := len(line); k > 0 && line[k-1] == '\r' {
				line = line[:k-1]
			}
			r.msgs = append(r.msgs, string(line))
		case protocol.Frame:
			if len(data) < 4 {
				if len(data) >= limit {
					r.fail = failTooLarge
				}
				r.rest = string(data)
				return r
			}
			total := uint64(data[0])<<24 | uint64(data[1])<<16 | uint64(data[2])<<8 | uint64(data[3])
			switch {
			case total < 4:
				r.fail = failMalformed
				return r
			case total > uint64(limit):
				r.fail = failTooLarge
				return r
			case total > uint64(len(data)):
				r.rest = string(data)
				return r
			}
			n = int(total)
			r.msgs = append(r.msgs, string(data[4:n]))
		default:
			panic("no reference for " + fmt.Sprint(p))
		}
		data = data[n:]
	}
	return r
}

func trunc(s string) string {
	if len(s) > 40 {
		return s[:40] + "..."
	}
	return s
}
