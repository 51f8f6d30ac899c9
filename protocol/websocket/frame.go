package websocket

import (
	"encoding/binary"
	"strconv"
)

// OpCode is a frame's opcode (RFC 6455, section 5.2).
type OpCode byte

// The opcodes of RFC 6455. OpContinuation only appears on the wire: messages
// reach OnMessage as OpText or OpBinary.
const (
	OpContinuation OpCode = 0x0
	OpText         OpCode = 0x1
	OpBinary       OpCode = 0x2
	OpClose        OpCode = 0x8
	OpPing         OpCode = 0x9
	OpPong         OpCode = 0xA
)

// IsControl reports whether op is a control opcode (close, ping, pong).
func (op OpCode) IsControl() bool { return op&0x8 != 0 }

func (op OpCode) String() string {
	switch op {
	case OpContinuation:
		return "continuation"
	case OpText:
		return "text"
	case OpBinary:
		return "binary"
	case OpClose:
		return "close"
	case OpPing:
		return "ping"
	case OpPong:
		return "pong"
	}
	return "opcode(" + strconv.Itoa(int(op)) + ")"
}

// StatusCode is the status code of a close frame (RFC 6455, section 7.4).
type StatusCode uint16

// Status codes. StatusNoStatusReceived, StatusAbnormalClosure and
// StatusTLSHandshake are never sent: they only reach OnClose, to tell that
// the peer's close frame had no code (1005) or that the connection ended
// without a close handshake (1006).
const (
	StatusNormalClosure           StatusCode = 1000
	StatusGoingAway               StatusCode = 1001
	StatusProtocolError           StatusCode = 1002
	StatusUnsupportedData         StatusCode = 1003
	StatusNoStatusReceived        StatusCode = 1005
	StatusAbnormalClosure         StatusCode = 1006
	StatusInvalidFramePayloadData StatusCode = 1007
	StatusPolicyViolation         StatusCode = 1008
	StatusMessageTooBig           StatusCode = 1009
	StatusMandatoryExtension      StatusCode = 1010
	StatusInternalServerError     StatusCode = 1011
	StatusServiceRestart          StatusCode = 1012
	StatusTryAgainLater           StatusCode = 1013
	StatusBadGateway              StatusCode = 1014
	StatusTLSHandshake            StatusCode = 1015
)

// Valid reports whether code may travel in a close frame: 1000-1003,
// 1007-1014 (1012-1014 are registered with IANA) and 3000-4999. A peer's
// close frame with any other code fails the connection with
// StatusProtocolError.
func (code StatusCode) Valid() bool {
	switch {
	case code >= 1000 && code <= 1003, code >= 1007 && code <= 1014:
		return true
	case code >= 3000 && code <= 4999:
		return true
	}
	return false
}

func (code StatusCode) String() string { return strconv.Itoa(int(code)) }

// Frame header bits and sizes.
const (
	finBit  = 0x80
	rsv1Bit = 0x40
	rsv2Bit = 0x20
	rsv3Bit = 0x10
	maskBit = 0x80

	maxHeaderLen         = 14 // 2 + 8 (64-bit length) + 4 (mask key)
	maxServerHeaderLen   = 10 // server frames carry no mask key
	maxControlPayloadLen = 125
)

// headerLen is the length of a frame header from its first two bytes.
func headerLen(b1 byte) int {
	n := 2
	switch b1 & 0x7f {
	case 126:
		n += 2
	case 127:
		n += 8
	}
	if b1&maskBit != 0 {
		n += 4
	}
	return n
}

// serverHeaderLen is the length of an unmasked header for a payload of n
// bytes.
func serverHeaderLen(n int) int {
	switch {
	case n <= 125:
		return 2
	case n <= 0xffff:
		return 4
	}
	return 10
}

// putHeader writes an unmasked frame header for a payload of n bytes into
// b, which must hold serverHeaderLen(n) bytes.
func putHeader(b []byte, fin, rsv1 bool, op OpCode, n int) {
	b0 := byte(op)
	if fin {
		b0 |= finBit
	}
	if rsv1 {
		b0 |= rsv1Bit
	}
	b[0] = b0
	switch {
	case n <= 125:
		b[1] = byte(n)
	case n <= 0xffff:
		b[1] = 126
		binary.BigEndian.PutUint16(b[2:], uint16(n))
	default:
		b[1] = 127
		binary.BigEndian.PutUint64(b[2:], uint64(n))
	}
}

// appendFrame appends a whole unmasked frame to dst.
func appendFrame(dst []byte, rsv1 bool, op OpCode, payload []byte) []byte {
	var h [maxServerHeaderLen]byte
	hl := serverHeaderLen(len(payload))
	putHeader(h[:], true, rsv1, op, len(payload))
	dst = append(dst, h[:hl]...)
	return append(dst, payload...)
}

// unmask XORs b in place with the mask key, starting at byte pos of the
// key, and returns the key position for the bytes that follow b.
//
// Written by hand rather than taken from a library: it is a few lines, it
// must work in place on the loop's read buffer, and a frame's payload
// arrives over any number of reads, so the key position has to carry over
// from one call to the next. The bulk goes eight bytes at a time: the key
// repeats every four bytes, so a 64-bit word of it lines up with every
// 8-byte step.
func unmask(b []byte, key [4]byte, pos int) int {
	next := (pos + len(b)) & 3
	var k [4]byte
	for i := range k {
		k[i] = key[(pos+i)&3]
	}
	if len(b) >= 8 {
		k32 := uint64(binary.LittleEndian.Uint32(k[:]))
		k64 := k32 | k32<<32
		for len(b) >= 32 {
			v0 := binary.LittleEndian.Uint64(b)
			v1 := binary.LittleEndian.Uint64(b[8:])
			v2 := binary.LittleEndian.Uint64(b[16:])
			v3 := binary.LittleEndian.Uint64(b[24:])
			binary.LittleEndian.PutUint64(b, v0^k64)
			binary.LittleEndian.PutUint64(b[8:], v1^k64)
			binary.LittleEndian.PutUint64(b[16:], v2^k64)
			binary.LittleEndian.PutUint64(b[24:], v3^k64)
			b = b[32:]
		}
		for len(b) >= 8 {
			binary.LittleEndian.PutUint64(b, binary.LittleEndian.Uint64(b)^k64)
			b = b[8:]
		}
	}
	for i := range b {
		b[i] ^= k[i&3]
	}
	return next
}
