package websocket

import (
	"bytes"
	"math/rand"
	"testing"
)

// FuzzFrameParser feeds arbitrary bytes to the parser, whole and cut into
// pieces chosen by seed: it must never panic, must buffer no more than the
// message limit allows, and must reach the same verdict (messages, control
// frames, close code) however the input is cut.
func FuzzFrameParser(f *testing.F) {
	stream, _ := mixedStream()
	f.Add(stream[:300], int64(1), false)
	f.Add(cat(text("hi"), clientFrame(true, 0, OpPing, []byte("x")), closeFrameFor(1000, "")), int64(2), false)
	f.Add(cat(clientFrame(false, 0, OpText, []byte("κ\xce")), clientFrame(true, 0, OpContinuation, []byte("\xbaa"))), int64(3), false)
	z := (&clientDeflater{}).compress([]byte("hello hello hello hello"))
	f.Add(clientFrame(true, rsv1Bit, OpText, z), int64(4), true)
	f.Add([]byte{0x82, 0xff, 0x7f, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4}, int64(5), false)
	f.Fuzz(func(t *testing.T, data []byte, seed int64, deflate bool) {
		const limit = 1 << 16
		whole := parseChunks(data, nil, limit, deflate)
		rng := rand.New(rand.NewSource(seed))
		// Cut and check the buffer bound on the way.
		buf := append([]byte(nil), data...)
		p := parser{limit: limit}
		if deflate {
			p.inflate = &inflater{takeover: true}
		}
		var r recorder
		var code StatusCode
		for len(buf) > 0 {
			n := 1 + rng.Intn(min(len(buf), 1+rng.Intn(64)))
			if err := p.feed(buf[:n], &r); err != nil && code == 0 {
				code = err.code
			}
			buf = buf[n:]
			if cap(p.buf) > 2*limit+4096 {
				t.Fatalf("buffered %d bytes with a %d limit", cap(p.buf), limit)
			}
		}
		if got := (verdict{joinLines(r.events), code}); got != whole {
			t.Fatalf("cut: %+v\nwhole: %+v", got, whole)
		}
	})
}

// FuzzInflate inflates arbitrary payloads: no panic, and never more output
// than the limit.
func FuzzInflate(f *testing.F) {
	f.Add((&clientDeflater{}).compress(bytes.Repeat([]byte("abc"), 1000)), false)
	f.Add([]byte{0xff, 0x00}, true)
	f.Add((&clientDeflater{}).compress(make([]byte, 1<<16)), true)
	f.Fuzz(func(t *testing.T, payload []byte, takeover bool) {
		const limit = 1 << 12
		in := &inflater{takeover: takeover}
		for i := 0; i < 2; i++ {
			out, err := in.inflate(nil, payload, limit)
			if len(out) > limit+1 || (err == nil && len(out) > limit) {
				t.Fatalf("%d bytes out with a %d limit (err %v)", len(out), limit, err)
			}
		}
	})
}
