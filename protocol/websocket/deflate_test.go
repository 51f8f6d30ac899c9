package websocket

import (
	"bytes"
	"compress/flate"
	"math/rand"
	"testing"
)

func TestNegotiateDeflate(t *testing.T) {
	cases := []struct {
		offer      string
		noTakeover bool
		resp       string
		ok         bool
	}{
		{"permessage-deflate", false, "permessage-deflate", true},
		{"permessage-deflate; client_max_window_bits", false, "permessage-deflate", true},
		{"permessage-deflate; client_max_window_bits=10", false, "permessage-deflate", true},
		{"permessage-deflate; server_no_context_takeover; client_no_context_takeover", false,
			"permessage-deflate; server_no_context_takeover; client_no_context_takeover", true},
		{"permessage-deflate", true, "permessage-deflate; server_no_context_takeover; client_no_context_takeover", true},
		{"permessage-deflate; server_max_window_bits=15", false, "permessage-deflate; server_max_window_bits=15", true},
		{`permessage-deflate; server_max_window_bits="15"`, false, "permessage-deflate; server_max_window_bits=15", true},
		{"permessage-deflate; server_max_window_bits=10", false, "", false},
		{"permessage-deflate; server_max_window_bits=10, permessage-deflate", false, "permessage-deflate", true},
		{"permessage-deflate; server_max_window_bits", false, "", false},
		{"permessage-deflate; client_max_window_bits=16", false, "", false},
		{"permessage-deflate; client_max_window_bits=08", false, "", false},
		{"permessage-deflate; server_no_context_takeover=1", false, "", false},
		{"permessage-deflate; server_no_context_takeover; server_no_context_takeover", false, "", false},
		{"permessage-deflate; foo", false, "", false},
		{"x-webkit-deflate-frame", false, "", false},
		{"foo, permessage-deflate; client_max_window_bits", false, "permessage-deflate", true},
	}
	for _, tc := range cases {
		resp, _, ok := negotiateDeflate([][]byte{[]byte(tc.offer)}, tc.noTakeover)
		if ok != tc.ok || resp != tc.resp {
			t.Errorf("%q: got %q %v, want %q %v", tc.offer, resp, ok, tc.resp, tc.ok)
		}
	}
}

// Client to server: messages compressed as browsers do, with and without
// context takeover, some fragmented, fed in random pieces.
func TestInflateRoundTrip(t *testing.T) {
	rng := rand.New(rand.NewSource(7))
	for _, takeover := range []bool{true, false} {
		cd := &clientDeflater{takeover: takeover}
		var stream []byte
		var r recorder
		for i := 0; i < 24; i++ {
			msg := randomText(rng, rng.Intn(3)*rng.Intn(12000))
			if i%5 == 0 {
				msg = bytes.Repeat(msg, 3) // references across the window
			}
			r.onMessage(OpText, msg)
			z := cd.compress(msg)
			if i%3 == 0 && len(z) > 2 {
				k := len(z) / 2
				stream = append(stream, clientFrame(false, rsv1Bit, OpText, z[:k])...)
				stream = append(stream, clientFrame(true, 0, OpPing, []byte("x"))...)
				stream = append(stream, clientFrame(true, 0, OpContinuation, z[k:])...)
				r.events = append(r.events[:len(r.events)-1], "ping x", r.events[len(r.events)-1])
			} else {
				stream = append(stream, clientFrame(true, rsv1Bit, OpText, z)...)
			}
			// Uncompressed messages may be mixed in.
			stream = append(stream, clientFrame(true, 0, OpBinary, []byte{byte(i)})...)
			r.onMessage(OpBinary, []byte{byte(i)})
		}
		want := verdict{events: joinLines(r.events)}
		for j := 0; j < 3; j++ {
			var cuts []int
			if j > 0 {
				cuts = randomCuts(rng, len(stream))
			}
			p := parser{limit: 1 << 20, inflate: &inflater{takeover: takeover}}
			var rec recorder
			data := append([]byte(nil), stream...)
			var code StatusCode
			for _, n := range append(cuts, len(data)) {
				n = min(n, len(data))
				if err := p.feed(data[:n], &rec); err != nil {
					code = err.code
				}
				data = data[n:]
			}
			if got := (verdict{joinLines(rec.events), code}); got != want {
				t.Fatalf("takeover %v: got %d events, code %d", takeover, len(rec.events), code)
			}
		}
	}
}

// Server to client, as a browser decodes it.
func TestDeflateRoundTrip(t *testing.T) {
	rng := rand.New(rand.NewSource(8))
	for _, dp := range []deflateParams{{}, {serverNoTakeover: true}} {
		c, ft := testConn(&Server{Compression: true}, &dp)
		ci := &clientInflater{takeover: !dp.serverNoTakeover}
		var sent [][]byte
		for i := 0; i < 30; i++ {
			msg := randomText(rng, rng.Intn(30000))
			sent = append(sent, msg)
			c.WriteText(msg)
		}
		frames := parseServerFrames(t, ft.take())
		var total, wire int
		for i, f := range frames {
			p := f.payload
			wire += len(p)
			total += len(sent[i])
			if f.rsv1 != (len(sent[i]) >= minCompressSize) {
				t.Fatalf("message %d (%d bytes): rsv1 %v", i, len(sent[i]), f.rsv1)
			}
			if f.rsv1 {
				var err error
				if p, err = ci.inflate(p); err != nil {
					t.Fatal(err)
				}
			}
			if !bytes.Equal(p, sent[i]) {
				t.Fatalf("message %d differs", i)
			}
		}
		if wire*2 > total {
			t.Errorf("poor compression: %d of %d bytes", wire, total)
		}
		c.onClosed()
	}
}

// A small payload that inflates past MaxMessageSize fails with 1009 after
// inflating at most the limit.
func TestInflateBomb(t *testing.T) {
	var z bytes.Buffer
	w, _ := flate.NewWriter(&z, flate.BestCompression)
	w.Write(make([]byte, 4<<20))
	w.Flush()
	payload := bytes.TrimSuffix(z.Bytes(), deflateTail)
	stream := clientFrame(true, rsv1Bit, OpBinary, payload)
	for _, limit := range []int64{1 << 10, 1 << 20, 4<<20 - 1} {
		got := parseChunks(stream, nil, limit, true)
		if got.code != StatusMessageTooBig {
			t.Fatalf("limit %d: %+v", limit, got)
		}
	}
	if got := parseChunks(stream, nil, 4<<20, true); got.code != 0 {
		t.Fatalf("at the limit: %+v", got)
	}
}

func TestDeflateViolations(t *testing.T) {
	cd := &clientDeflater{}
	z := cd.compress([]byte("hello hello hello"))
	for _, tc := range []struct {
		stream []byte
		code   StatusCode
	}{
		{cat(clientFrame(false, rsv1Bit, OpText, z[:3]), clientFrame(true, rsv1Bit, OpContinuation, z[3:])), 1002},
		{clientFrame(true, rsv1Bit, OpPing, nil), 1002},
		{clientFrame(true, rsv1Bit, OpText, []byte{0xff, 0xff, 0xff}), 1007},
		{clientFrame(true, rsv1Bit, OpText, (&clientDeflater{}).compress([]byte("ok\xff"))), 1007},
		{clientFrame(true, rsv1Bit|rsv2Bit, OpText, z), 1002},
	} {
		if got := parseChunks(tc.stream, nil, -1, true); got.code != tc.code {
			t.Errorf("%x: %+v, want %d", tc.stream, got, tc.code)
		}
	}
}

func TestPreparedMessage(t *testing.T) {
	msg := bytes.Repeat([]byte("broadcast "), 50)
	plain, _ := testConn(&Server{}, nil)
	noCtx, _ := testConn(&Server{}, &deflateParams{serverNoTakeover: true, clientNoTakeover: true})
	ctx, _ := testConn(&Server{}, &deflateParams{})
	n, err := Broadcast([]*Conn{plain, noCtx, ctx}, OpText, msg)
	if err != nil || n != 3 {
		t.Fatal(n, err)
	}
	pm, _ := NewPreparedMessage(OpText, msg)
	for i, c := range []*Conn{plain, noCtx, ctx} {
		c.WritePrepared(pm)
		c.WritePrepared(pm)
		frames := parseServerFrames(t, c.c.(*fakeTransport).take())
		ci := &clientInflater{takeover: c.defl != nil && c.defl.takeover}
		for _, f := range frames {
			p := f.payload
			if f.rsv1 != (i > 0) {
				t.Fatalf("conn %d: rsv1 %v", i, f.rsv1)
			}
			if f.rsv1 {
				p, err = ci.inflate(p)
				if err != nil {
					t.Fatal(err)
				}
			}
			if !bytes.Equal(p, msg) {
				t.Fatalf("conn %d: wrong payload", i)
			}
		}
	}
	// The context-free compressed frame is made once.
	if a, b := pm.deflatedFrame(), pm.deflatedFrame(); &a[0] != &b[0] {
		t.Fatal("compressed twice")
	}
	if _, err := NewPreparedMessage(OpClose, nil); err == nil {
		t.Fatal("control opcode accepted")
	}
}
