package websocket

import (
	"bytes"
	"errors"
	"fmt"
	"sync"
	"testing"
)

// closedWith runs a Conn over a fake transport on stream and returns the
// frames it sent and what OnClose reported.
func closedWith(t *testing.T, s *Server, stream []byte) ([]serverFrame, *fakeTransport, StatusCode, string) {
	t.Helper()
	var code StatusCode
	var reason string
	s.OnClose = func(c *Conn, cd StatusCode, r string) { code, reason = cd, r }
	c, ft := testConn(s, nil)
	c.onData(append([]byte(nil), stream...))
	c.onClosed() // herd would call it once the transport closed
	return parseServerFrames(t, ft.take()), ft, code, reason
}

func TestViolationsOnTheWire(t *testing.T) {
	cases := []struct {
		stream []byte
		code   StatusCode
	}{
		{[]byte{0x81, 0x02, 'h', 'i'}, 1002},
		{clientFrame(true, rsv1Bit, OpText, []byte("x")), 1002},
		{clientFrame(true, 0, 5, nil), 1002},
		{clientFrame(true, 0, OpPing, make([]byte, 126)), 1002},
		{clientFrame(false, 0, OpPong, nil), 1002},
		{clientFrame(true, 0, OpContinuation, nil), 1002},
		{cat(clientFrame(false, 0, OpText, []byte("a")), text("b")), 1002},
		{clientFrame(true, 0, OpClose, []byte{1}), 1002},
		{closeFrameFor(1006, ""), 1002},
		{closeFrameFor(1000, "\xc3"), 1007},
		{text("\xff"), 1007},
		{clientFrame(true, 0, OpBinary, make([]byte, 2000)), 1009},
	}
	for i, tc := range cases {
		t.Run(fmt.Sprint(i), func(t *testing.T) {
			s := &Server{MaxMessageSize: 1000}
			var got []StatusCode
			s.OnMessage = func(*Conn, OpCode, []byte) { t.Error("message delivered") }
			frames, ft, code, _ := closedWith(t, s, tc.stream)
			for _, f := range frames {
				got = append(got, closeCodeOf(f))
			}
			if len(frames) != 1 || got[0] != tc.code {
				t.Fatalf("sent %v, want one close frame with %d", got, tc.code)
			}
			if !ft.closed {
				t.Fatal("transport not closed")
			}
			if ft.noLinger {
				t.Fatal("closed without a linger after a violation: the peer may still be sending")
			}
			if code != tc.code {
				t.Fatalf("OnClose code %d, want %d", code, tc.code)
			}
		})
	}
}

func TestPingPongAndEcho(t *testing.T) {
	s := &Server{}
	s.OnMessage = func(c *Conn, op OpCode, data []byte) { c.WriteMessage(op, data) }
	c, ft := testConn(s, nil)
	stream := cat(
		clientFrame(false, 0, OpText, []byte("hel")),
		clientFrame(true, 0, OpPing, []byte("are you there")),
		clientFrame(true, 0, OpContinuation, []byte("lo")),
		clientFrame(true, 0, OpPing, nil),
		clientFrame(true, 0, OpBinary, []byte{0, 1, 2}),
	)
	for i := range stream { // byte by byte
		c.onData(stream[i : i+1])
	}
	frames := parseServerFrames(t, ft.take())
	want := []serverFrame{
		{true, false, OpPong, []byte("are you there")},
		{true, false, OpText, []byte("hello")},
		{true, false, OpPong, []byte{}},
		{true, false, OpBinary, []byte{0, 1, 2}},
	}
	if fmt.Sprint(frames) != fmt.Sprint(want) {
		t.Fatalf("got %v\nwant %v", frames, want)
	}
}

func TestPeerInitiatedClose(t *testing.T) {
	for _, tc := range []struct {
		frame []byte
		echo  []byte // payload echoed
		code  StatusCode
	}{
		{closeFrameFor(1001, "going"), []byte{0x03, 0xe9}, 1001},
		{closeFrameFor(4000, ""), []byte{0x0f, 0xa0}, 4000},
		{clientFrame(true, 0, OpClose, nil), []byte{}, StatusNoStatusReceived},
	} {
		s := &Server{}
		frames, ft, code, _ := closedWith(t, s, cat(tc.frame, text("after close")))
		if len(frames) != 1 || frames[0].op != OpClose || !bytes.Equal(frames[0].payload, tc.echo) {
			t.Fatalf("sent %v, want a close echoing %x", frames, tc.echo)
		}
		if !ft.closed || code != tc.code {
			t.Fatalf("closed %v, OnClose code %d, want %d", ft.closed, code, tc.code)
		}
		if !ft.noLinger {
			t.Fatal("lingered after the peer's close frame")
		}
	}
}

func TestServerInitiatedClose(t *testing.T) {
	s := &Server{}
	var delivered int
	var code StatusCode
	var reason string
	s.OnMessage = func(*Conn, OpCode, []byte) { delivered++ }
	s.OnClose = func(c *Conn, cd StatusCode, r string) { code, reason = cd, r }
	c, ft := testConn(s, nil)
	if err := c.Close(StatusGoingAway, "restart"); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(StatusNormalClosure, ""); !errors.Is(err, ErrClosed) {
		t.Fatalf("second Close: %v", err)
	}
	if err := c.WriteText([]byte("late")); !errors.Is(err, ErrClosed) {
		t.Fatalf("write after Close: %v", err)
	}
	frames := parseServerFrames(t, ft.take())
	if len(frames) != 1 || closeCodeOf(frames[0]) != 1001 || string(frames[0].payload[2:]) != "restart" {
		t.Fatalf("sent %v", frames)
	}
	if ft.closed {
		t.Fatal("closed before the peer answered")
	}
	// The peer sends a message, a ping, then its close.
	c.onData(cat(text("in flight"), clientFrame(true, 0, OpPing, nil), closeFrameFor(1001, "ok")))
	if delivered != 0 {
		t.Fatal("message delivered after Close")
	}
	if rest := ft.take(); len(rest) != 0 {
		t.Fatalf("sent after the close frame: %x", rest)
	}
	if !ft.closed || !ft.noLinger {
		t.Fatalf("after the peer's close: closed %v, without linger %v; want both", ft.closed, ft.noLinger)
	}
	c.onClosed()
	if code != 1001 || reason != "ok" {
		t.Fatalf("OnClose %d %q", code, reason)
	}
	if err := c.Close(4999, ""); !errors.Is(err, ErrClosed) {
		t.Fatal(err)
	}
	c2, _ := testConn(s, nil)
	if c2.Close(1005, "") != ErrInvalidCode || c2.Close(1000, string(make([]byte, 124))) != ErrControlTooLong {
		t.Fatal("Close accepted a bad code or reason")
	}
	if c2.Ping(make([]byte, 126)) != ErrControlTooLong || c2.WriteMessage(OpPing, nil) != ErrDataOpCode {
		t.Fatal("bad ping or opcode accepted")
	}
}

// Frames written from many goroutines at once arrive whole.
func TestConcurrentWrites(t *testing.T) {
	for _, dp := range []*deflateParams{nil, {}, {true, true}} {
		c, ft := testConn(&Server{}, dp)
		var wg sync.WaitGroup
		for g := 0; g < 8; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				msg := bytes.Repeat([]byte{byte('a' + g)}, 100+g*300)
				for i := 0; i < 50; i++ {
					c.WriteBinary(msg)
				}
			}()
		}
		wg.Wait()
		frames := parseServerFrames(t, ft.take())
		if len(frames) != 400 {
			t.Fatalf("%d frames", len(frames))
		}
		inf := &clientInflater{takeover: dp != nil && !dp.serverNoTakeover}
		for _, f := range frames {
			p := f.payload
			if f.rsv1 {
				var err error
				if p, err = inf.inflate(p); err != nil {
					t.Fatal(err)
				}
			}
			if len(p) < 100 || !bytes.Equal(p, bytes.Repeat(p[:1], len(p))) {
				t.Fatalf("interleaved frame")
			}
		}
	}
}

func TestPendingUntilStarted(t *testing.T) {
	ft := &fakeTransport{}
	c := (&Server{}).newConn(ft, &fakeLoop{}, "", nil)
	c.WriteText([]byte("early"))
	if ft.out.Len() != 0 {
		t.Fatal("sent before the 101")
	}
	c.start()
	c.WriteText([]byte("later"))
	frames := parseServerFrames(t, ft.take())
	if len(frames) != 2 || string(frames[0].payload) != "early" || string(frames[1].payload) != "later" {
		t.Fatalf("%v", frames)
	}
}
