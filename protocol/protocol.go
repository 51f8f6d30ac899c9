// Package protocol defines how herd cuts a byte stream into messages, and
// ships the two simplest protocols: Text (newline-delimited) and Frame
// (4-byte big-endian total length, byte-compatible with Workerman's Frame).
//
// The contract is Workerman's: Input says how long the next packet is (or that
// more bytes are needed), Decode turns a whole packet into the message given to
// OnMessage, Encode turns a message passed to Send into its wire form. A
// protocol holds no per-connection state, so one value serves every
// connection of a Worker; it must be safe for concurrent use.
package protocol

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
)

// Protocol cuts a byte stream into packets and frames outgoing messages.
type Protocol interface {
	// Input reports the length in bytes of the first packet at the start of
	// buf: 0 means buf does not yet hold enough to tell; a length larger
	// than len(buf) means the packet is known to be that long and more bytes
	// are needed. An error means the stream is malformed; the connection is
	// closed. Input must not keep buf.
	Input(buf []byte) (int, error)

	// Decode returns the message carried by packet, which is exactly the
	// length Input reported. It may return a sub-slice of packet.
	Decode(packet []byte) []byte

	// Encode appends the wire form of msg to dst and returns the result.
	Encode(dst, msg []byte) []byte
}

// Errors returned by Input for malformed streams.
var (
	// ErrFrameLength is returned for a Frame header whose total length is
	// smaller than the header itself.
	ErrFrameLength = errors.New("protocol: frame length smaller than its 4-byte header")
)

// Text is Workerman's text protocol: each packet is a line ending in "\n".
// Decode strips the "\n" and a "\r" before it; Encode appends "\n".
// The longest line accepted is the Worker's MaxPackageSize.
type Text struct{}

// Input returns the length of the first line including its "\n", or 0.
func (Text) Input(buf []byte) (int, error) {
	if i := bytes.IndexByte(buf, '\n'); i >= 0 {
		return i + 1, nil
	}
	return 0, nil
}

// Decode strips the line ending.
func (Text) Decode(packet []byte) []byte {
	packet = packet[:len(packet)-1]
	if n := len(packet); n > 0 && packet[n-1] == '\r' {
		packet = packet[:n-1]
	}
	return packet
}

// Encode appends msg and "\n". A message containing "\n" would read as
// several lines on the other side; that is the caller's business, as in
// Workerman.
func (Text) Encode(dst, msg []byte) []byte {
	dst = append(dst, msg...)
	return append(dst, '\n')
}

// String names the protocol in logs.
func (Text) String() string { return "text" }

// FrameHeaderLen is the size of a Frame header.
const FrameHeaderLen = 4

// Frame is Workerman's Frame protocol: a 4-byte big-endian length that counts
// the whole packet, header included, followed by the message.
type Frame struct{}

// Input returns the total length from the header once 4 bytes are there.
func (Frame) Input(buf []byte) (int, error) {
	if len(buf) < FrameHeaderLen {
		return 0, nil
	}
	n := binary.BigEndian.Uint32(buf)
	if n < FrameHeaderLen {
		return 0, fmt.Errorf("%w: %d", ErrFrameLength, n)
	}
	if uint64(n) > uint64(maxInt) {
		// Only on 32-bit platforms; the Worker's MaxPackageSize rejects
		// anything this large anyway.
		return maxInt, nil
	}
	return int(n), nil
}

// Decode strips the header.
func (Frame) Decode(packet []byte) []byte { return packet[FrameHeaderLen:] }

// Encode appends the header and msg.
func (Frame) Encode(dst, msg []byte) []byte {
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(msg)+FrameHeaderLen))
	return append(dst, msg...)
}

// String names the protocol in logs.
func (Frame) String() string { return "frame" }

const maxInt = int(^uint(0) >> 1)
