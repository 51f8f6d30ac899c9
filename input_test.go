//go:build linux || darwin || freebsd

package herd

// Input: protocols cutting the stream, packet limits, malformed and
// panicking protocols, PauseRecv.

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/seed358e4494/herd/protocol"
)

func frameHeader(n uint32) []byte { return binary.BigEndian.AppendUint32(nil, n) }

// frameEcho checks that a frame connection echoes msg.
func frameEcho(t testing.TB, c net.Conn, br *bufio.Reader, msg []byte) {
	t.Helper()
	if _, err := c.Write(appendFrame(nil, msg)); err != nil {
		t.Fatalf("write: %v", err)
	}
	got, err := readFrame(br)
	if err != nil {
		t.Fatalf("read echo: %v", err)
	}
	if !bytes.Equal(got, msg) {
		t.Fatalf("echo: got %d bytes %.20q, want %d bytes", len(got), got, len(msg))
	}
}

func TestFramePackageTooLarge(t *testing.T) {
	t.Parallel()
	var errs errorLog
	var closes atomic.Int32
	w := &Worker{
		Addr:           "frame://127.0.0.1:0",
		Count:          1,
		MaxPackageSize: 1024,
		OnMessage:      func(c *Conn, msg []byte) { c.Send(msg) },
		OnError:        errs.add,
		OnClose:        func(*Conn) { closes.Add(1) },
	}
	r := startWorker(t, w)

	good := r.dial(t)
	gbr := bufio.NewReader(good)
	// The largest packet allowed: 1024 bytes with its header.
	frameEcho(t, good, gbr, bytes.Repeat([]byte("m"), 1020))

	for i, size := range []uint32{1025, 2000, 1 << 30} {
		c := r.dial(t)
		msg := append(frameHeader(size), bytes.Repeat([]byte("z"), 100)...)
		if _, err := c.Write(msg); err != nil {
			t.Fatal(err)
		}
		err := errs.wait(t, i+1)
		if !errors.Is(err, ErrPackageTooLarge) {
			t.Errorf("header %d: OnError got %v, want ErrPackageTooLarge", size, err)
		}
		expectClosed(t, c, fmt.Sprintf("header %d", size))
		// The loop goes on serving: the open connection and a new one.
		frameEcho(t, good, gbr, []byte("still served "+strconv.Itoa(i)))
		c2 := r.dial(t)
		frameEcho(t, c2, bufio.NewReader(c2), []byte("new connection"))
		c2.Close()
	}
	waitFor(t, 10*time.Second, "6 closes", func() bool { return closes.Load() == 6 })
	if n := len(errs.list()); n != 3 {
		t.Errorf("OnError ran %d times, want 3: %v", n, errs.list())
	}
}

func TestTextLineTooLong(t *testing.T) {
	t.Parallel()
	var errs errorLog
	w := &Worker{
		Addr:           "text://127.0.0.1:0",
		Count:          1,
		MaxPackageSize: 1024,
		OnMessage:      textEcho,
		OnError:        errs.add,
	}
	r := startWorker(t, w)
	good := r.dial(t)
	gbr := bufio.NewReader(good)
	echoLine(t, good, gbr, strings.Repeat("k", 1023)) // 1024 with "\n"

	bad := r.dial(t)
	if _, err := bad.Write(bytes.Repeat([]byte("a"), 2048)); err != nil {
		t.Fatal(err)
	}
	if err := errs.wait(t, 1); !errors.Is(err, ErrPackageTooLarge) {
		t.Errorf("OnError got %v, want ErrPackageTooLarge", err)
	}
	expectClosed(t, bad, "line without newline")

	// Sent in small pieces, the line is refused as soon as it is too long.
	slow := r.dial(t)
	for i := 0; i < 12; i++ {
		if _, err := slow.Write(bytes.Repeat([]byte("b"), 100)); err != nil {
			if isReset(err) {
				break
			}
			t.Fatal(err)
		}
		time.Sleep(2 * time.Millisecond)
	}
	if err := errs.wait(t, 2); !errors.Is(err, ErrPackageTooLarge) {
		t.Errorf("OnError got %v, want ErrPackageTooLarge", err)
	}
	expectClosed(t, slow, "line sent in pieces")

	echoLine(t, good, gbr, "still served")
	c := r.dial(t)
	echoLine(t, c, bufio.NewReader(c), "new connection")
}

func TestFrameMalformedLength(t *testing.T) {
	t.Parallel()
	var errs errorLog
	w := &Worker{
		Addr:      "frame://127.0.0.1:0",
		Count:     1,
		OnMessage: func(c *Conn, msg []byte) { c.Send(msg) },
		OnError:   errs.add,
	}
	r := startWorker(t, w)
	for i, n := range []uint32{0, 3} {
		c := r.dial(t)
		if _, err := c.Write(append(frameHeader(n), "xyz"...)); err != nil {
			t.Fatal(err)
		}
		err := errs.wait(t, i+1)
		if !errors.Is(err, protocol.ErrFrameLength) || !strings.Contains(err.Error(), "malformed") {
			t.Errorf("length %d: OnError got %v, want a malformed-input error wrapping protocol.ErrFrameLength", n, err)
		}
		expectClosed(t, c, fmt.Sprintf("frame length %d", n))
	}
	c := r.dial(t)
	frameEcho(t, c, bufio.NewReader(c), []byte("fine"))
}

// panicky is a protocol whose Input panics on a line "boom" and returns a
// negative length on a line "neg".
type panicky struct{}

func (panicky) Input(b []byte) (int, error) {
	i := bytes.IndexByte(b, '\n')
	switch {
	case i < 0:
		return 0, nil
	case string(b[:i]) == "boom":
		panic("boom")
	case string(b[:i]) == "neg":
		return -1, nil
	}
	return i + 1, nil
}

func (panicky) Decode(p []byte) []byte {
	if string(p) == "dec\n" {
		panic("decode")
	}
	return p[:len(p)-1]
}

func (panicky) Encode(dst, m []byte) []byte { return append(append(dst, m...), '\n') }

// Owed-bytes finding 14: a panic in Protocol.Input or Decode killed the
// process, and a negative length panicked inside herd. Each now closes that
// connection with an error; the loop serves the others.
func TestProtocolFaultsCloseConn(t *testing.T) {
	t.Parallel()
	var errs errorLog
	w := &Worker{Addr: "tcp://127.0.0.1:0", Count: 1, Protocol: panicky{}, OnMessage: textEcho, OnError: errs.add}
	r := startWorker(t, w)
	for i, line := range []string{"boom", "neg", "dec"} {
		c := r.dial(t)
		br := bufio.NewReader(c)
		echoLine(t, c, br, "fine")
		io.WriteString(c, line+"\n")
		expectClosed(t, c, line)
		err := errs.wait(t, i+1)
		if line == "neg" {
			if !strings.Contains(err.Error(), "negative") {
				t.Errorf("%s: OnError %v", line, err)
			}
		} else if !errors.Is(err, ErrPanic) {
			t.Errorf("%s: OnError %v, want ErrPanic", line, err)
		}
	}
	c := r.dial(t)
	echoLine(t, c, bufio.NewReader(c), "still serving")
}

// Owed-bytes finding 17: a packet that never completes grew the connection's
// input buffer by doubling, up to about twice MaxPackageSize. It now stays
// within MaxPackageSize plus one read buffer until the connection is
// refused.
func TestUnfinishedPacketBounded(t *testing.T) {
	t.Parallel()
	const limit = 1 << 20
	conns := make(chan *Conn, 1)
	var errs errorLog
	w := &Worker{Addr: "text://127.0.0.1:0", Count: 1, MaxPackageSize: limit, OnMessage: textEcho,
		OnConnect: func(c *Conn) { conns <- c }, OnError: errs.add}
	r := startWorker(t, w)
	cl := r.dialSmallBufs(t, 16<<10)
	c := acceptedConn(t, conns)
	chunk := bytes.Repeat([]byte("x"), 48<<10)
	peak := 0
	for sent := 0; sent < 3*limit; sent += len(chunk) {
		if _, err := cl.Write(chunk); err != nil {
			break // refused: closed
		}
		time.Sleep(time.Millisecond) // a slow sender: many reads
		onLoop(t, c.Loop(), func() { peak = max(peak, cap(c.pending())) })
	}
	if err := errs.wait(t, 1); !errors.Is(err, ErrPackageTooLarge) {
		t.Errorf("OnError %v, want ErrPackageTooLarge", err)
	}
	if bound := limit + readBufferSize; peak > bound {
		t.Errorf("input buffer grew to %d bytes; bound %d", peak, bound)
	}
	t.Logf("input buffer peaked at %d bytes for a %d-byte limit", peak, limit)
}

func TestPauseResumeRecv(t *testing.T) {
	t.Parallel()
	conns := make(chan *Conn, 1)
	var mu sync.Mutex
	var got []string
	w := &Worker{
		Addr:      "text://127.0.0.1:0",
		Count:     1,
		OnConnect: func(c *Conn) { conns <- c },
		OnMessage: func(c *Conn, msg []byte) {
			mu.Lock()
			got = append(got, string(msg))
			mu.Unlock()
			if string(msg) == "pause" {
				c.PauseRecv()
			}
			c.Send(msg)
		},
	}
	r := startWorker(t, w)
	cl := r.dial(t)
	c := acceptedConn(t, conns)
	messages := func() []string {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(got)
	}

	// Paused from OnMessage: the messages after it in the same read wait.
	if _, err := io.WriteString(cl, "pause\na\nb\n"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the pause message", func() bool { return len(messages()) >= 1 })
	if _, err := io.WriteString(cl, "c\n"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	onLoop(t, c.Loop(), func() {})
	if m := messages(); !slices.Equal(m, []string{"pause"}) {
		t.Errorf("OnMessage while paused: got %q, want only [pause]", m)
	}
	c.ResumeRecv()
	waitFor(t, 10*time.Second, "messages after ResumeRecv", func() bool { return len(messages()) >= 4 })
	if m := messages(); !slices.Equal(m, []string{"pause", "a", "b", "c"}) {
		t.Errorf("after ResumeRecv: got %q", m)
	}

	// Paused from another goroutine.
	c.PauseRecv()
	if _, err := io.WriteString(cl, "d\ne\n"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	onLoop(t, c.Loop(), func() {})
	if m := messages(); len(m) != 4 {
		t.Errorf("OnMessage while paused: got %q", m[4:])
	}
	c.ResumeRecv()
	waitFor(t, 10*time.Second, "messages after the second ResumeRecv", func() bool { return len(messages()) >= 6 })
	if m := messages(); !slices.Equal(m, []string{"pause", "a", "b", "c", "d", "e"}) {
		t.Errorf("after ResumeRecv: got %q", m)
	}
	br := bufio.NewReader(cl)
	for _, want := range []string{"pause", "a", "b", "c", "d", "e"} {
		line, err := br.ReadString('\n')
		if err != nil || line != want+"\n" {
			t.Fatalf("answer: got %q, %v; want %q", line, err, want)
		}
	}
}
