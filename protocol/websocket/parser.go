package websocket

import (
	"encoding/binary"
	"unicode/utf8"

	"github.com/seed358e4494/herd/internal/bufpool"
)

// The frame parser.
//
// Hand-written because no library fits herd's loop: gobwas/ws, gorilla and
// nhooyr read frames from an io.Reader and block until a frame is whole,
// while a herd loop is handed whatever one read returned and must return at
// once. This parser is pushed bytes instead and keeps its place between
// calls: a header or payload may be cut at any byte, over any number of
// reads. A message whose frame lies whole in the read buffer (the common
// case) is unmasked and delivered in place, with no copy; only the parts of
// frames that straddle reads, and the frames of fragmented messages, are
// copied into a per-connection buffer, taken from a pool when needed and
// bounded by MaxMessageSize (decided from the frame headers, before
// anything is buffered). A partial header waits in a 14-byte array, a
// partial control frame in a 125-byte one.

// closeErr is a protocol violation: the close code to fail the connection
// with, and the reason sent with it.
type closeErr struct {
	code   StatusCode
	reason string
}

func (e *closeErr) Error() string { return "websocket: " + e.reason + " (" + e.code.String() + ")" }

// The violations, allocated once.
var (
	errUnmasked       = &closeErr{StatusProtocolError, "unmasked client frame"}
	errReservedBits   = &closeErr{StatusProtocolError, "reserved bits set"}
	errReservedOpcode = &closeErr{StatusProtocolError, "reserved opcode"}
	errControlTooLong = &closeErr{StatusProtocolError, "control frame payload over 125 bytes"}
	errControlFrag    = &closeErr{StatusProtocolError, "fragmented control frame"}
	errStrayContinue  = &closeErr{StatusProtocolError, "continuation frame without a message"}
	errExpectedContin = &closeErr{StatusProtocolError, "new data frame inside a fragmented message"}
	errLength64       = &closeErr{StatusProtocolError, "64-bit payload length with the top bit set"}
	errCloseLen1      = &closeErr{StatusProtocolError, "close frame payload of 1 byte"}
	errCloseCode      = &closeErr{StatusProtocolError, "invalid close code"}
	errTooBig         = &closeErr{StatusMessageTooBig, "message too big"}
	errBadUTF8        = &closeErr{StatusInvalidFramePayloadData, "invalid UTF-8 in text message"}
	errBadReason      = &closeErr{StatusInvalidFramePayloadData, "invalid UTF-8 in close reason"}
	errBadDeflate     = &closeErr{StatusInvalidFramePayloadData, "invalid deflate data"}
	errUnexpectedRSV1 = &closeErr{StatusProtocolError, "RSV1 set on a control or continuation frame"}
)

// frameHandler receives what the parser decodes. Each method returns false
// to stop parsing (the connection is going away). data and payload are
// valid only during the call.
type frameHandler interface {
	onMessage(op OpCode, data []byte) bool
	onPing(payload []byte) bool
	onPong(payload []byte) bool
	// onClose gets the peer's close frame, validated: the code is
	// StatusNoStatusReceived when the frame had none.
	onClose(code StatusCode, reason []byte) bool
}

// parser decodes the frames a client sends. It belongs to one connection
// and is used only on its loop.
type parser struct {
	limit   int64     // MaxMessageSize; < 0: none
	inflate *inflater // nil: permessage-deflate not negotiated, RSV1 is an error

	// A header cut by the end of a read.
	hdr  [maxHeaderLen]byte
	hdrN int

	// The frame whose payload is being read.
	inFrame bool
	fin     bool
	op      OpCode
	key     [4]byte
	keyPos  int
	remain  int64 // payload bytes still to come
	whole   bool  // the frame is a whole message (first and final)
	started bool  // some of its payload has been consumed

	// The data message in progress (msgOp != 0).
	msgOp      OpCode
	msgDeflate bool
	msgLen     int64  // payload bytes announced so far
	buf        []byte // its bytes when they cannot be delivered in place
	buffered   bool   // it goes through buf, its text validated piece by piece
	utf        utf8State

	// A control frame in progress.
	ctrl  [maxControlPayloadLen]byte
	ctrlN int

	out    []byte    // inflated message, reused
	err    *closeErr // sticky verdict
	closed bool      // the close frame arrived; nothing more is read
}

// feed parses data, calling h for each message and control frame, and
// returns the violation that must fail the connection, if any. data is
// unmasked in place and must be writable; it is not kept. A partial frame
// at the end waits for the next call. After a violation, a close frame or
// a handler returning false, feed ignores its input.
func (p *parser) feed(data []byte, h frameHandler) *closeErr {
	if p.err != nil || p.closed {
		return p.err
	}
	for len(data) > 0 {
		if !p.inFrame {
			var hdr []byte
			if p.hdrN == 0 && len(data) >= 2 && len(data) >= headerLen(data[1]) {
				n := headerLen(data[1])
				hdr, data = data[:n], data[n:]
			} else {
				// Gather the header over reads: two bytes tell its length.
				need := 2
				if p.hdrN >= 2 {
					need = headerLen(p.hdr[1])
				}
				for p.hdrN < need && len(data) > 0 {
					c := copy(p.hdr[p.hdrN:need], data)
					p.hdrN += c
					data = data[c:]
					if p.hdrN == 2 {
						need = headerLen(p.hdr[1])
					}
				}
				if p.hdrN < need {
					return nil
				}
				hdr = p.hdr[:need]
				p.hdrN = 0
			}
			if err := p.header(hdr); err != nil {
				return p.fail(err)
			}
			if p.remain == 0 {
				if err, ok := p.frameEnd(h); err != nil || !ok {
					return p.stop(err)
				}
				continue
			}
		}
		n := int64(len(data))
		if n > p.remain {
			n = p.remain
		}
		chunk := data[:n]
		data = data[n:]
		p.keyPos = unmask(chunk, p.key, p.keyPos)
		if p.op.IsControl() {
			p.ctrlN += copy(p.ctrl[p.ctrlN:], chunk)
			p.remain -= n
			if p.remain == 0 {
				if err, ok := p.frameEnd(h); err != nil || !ok {
					return p.stop(err)
				}
			}
			continue
		}
		if p.whole && !p.started && n == p.remain {
			// The whole message is in the read buffer: deliver it in place.
			p.remain = 0
			p.inFrame = false
			if err, ok := p.deliver(chunk, h); err != nil || !ok {
				return p.stop(err)
			}
			continue
		}
		p.started, p.buffered = true, true
		if p.msgOp == OpText && !p.msgDeflate && !p.utf.feed(chunk) {
			return p.fail(errBadUTF8)
		}
		if p.buf == nil {
			p.buf = bufpool.Get(len(chunk))
		}
		p.buf = append(p.buf, chunk...)
		p.remain -= n
		if p.remain == 0 {
			if err, ok := p.frameEnd(h); err != nil || !ok {
				return p.stop(err)
			}
		}
	}
	return nil
}

// header validates a whole frame header and makes it the current frame.
func (p *parser) header(b []byte) *closeErr {
	b0, b1 := b[0], b[1]
	op := OpCode(b0 & 0x0f)
	fin := b0&finBit != 0
	if b0&(rsv2Bit|rsv3Bit) != 0 {
		return errReservedBits
	}
	rsv1 := b0&rsv1Bit != 0
	if rsv1 && p.inflate == nil {
		return errReservedBits
	}
	switch op {
	case OpContinuation, OpText, OpBinary, OpClose, OpPing, OpPong:
	default:
		return errReservedOpcode
	}
	if b1&maskBit == 0 {
		return errUnmasked
	}
	var length int64
	k := 2
	switch l := b1 & 0x7f; l {
	case 126:
		length = int64(binary.BigEndian.Uint16(b[2:]))
		k = 4
	case 127:
		u := binary.BigEndian.Uint64(b[2:])
		if u>>63 != 0 {
			return errLength64
		}
		length = int64(u)
		k = 10
	default:
		length = int64(l)
	}
	copy(p.key[:], b[k:k+4])
	if op.IsControl() {
		if !fin {
			return errControlFrag
		}
		if length > maxControlPayloadLen {
			return errControlTooLong
		}
		if rsv1 {
			return errUnexpectedRSV1
		}
		p.ctrlN = 0
	} else {
		if op == OpContinuation {
			if p.msgOp == 0 {
				return errStrayContinue
			}
			if rsv1 {
				return errUnexpectedRSV1
			}
		} else {
			if p.msgOp != 0 {
				return errExpectedContin
			}
			p.msgOp, p.msgDeflate, p.msgLen = op, rsv1, 0
			p.utf.reset()
		}
		if p.limit >= 0 && length > p.limit-p.msgLen {
			return errTooBig
		}
		p.msgLen += length
		p.whole = op != OpContinuation && fin
	}
	p.inFrame = true
	p.fin, p.op = fin, op
	p.keyPos = 0
	p.remain = length
	p.started = false
	return nil
}

// frameEnd finishes a frame whose payload has been read: a control frame,
// or the last frame of a buffered message.
func (p *parser) frameEnd(h frameHandler) (*closeErr, bool) {
	p.inFrame = false
	switch p.op {
	case OpPing:
		return nil, h.onPing(p.ctrl[:p.ctrlN])
	case OpPong:
		return nil, h.onPong(p.ctrl[:p.ctrlN])
	case OpClose:
		return p.closeFrame(h)
	}
	if !p.fin {
		return nil, true
	}
	return p.deliver(p.buf, h)
}

// deliver hands a complete message to h, inflating it first if it was
// compressed, and validates text.
func (p *parser) deliver(data []byte, h frameHandler) (*closeErr, bool) {
	op := p.msgOp
	if p.msgDeflate {
		if p.out == nil {
			p.out = bufpool.Get(0)
		}
		out, err := p.inflate.inflate(p.out, data, p.limit)
		p.out = out
		if err != nil {
			return err, false
		}
		data = out
		if op == OpText && !utf8.Valid(data) {
			return errBadUTF8, false
		}
	} else if op == OpText {
		if p.buffered {
			// Validated piece by piece on the way in.
			if !p.utf.complete() {
				return errBadUTF8, false
			}
		} else if !utf8.Valid(data) {
			return errBadUTF8, false
		}
	}
	p.msgOp, p.msgDeflate, p.msgLen, p.buffered = 0, false, 0, false
	ok := h.onMessage(op, data)
	p.release()
	return nil, ok
}

// closeFrame validates the peer's close frame and hands it on.
func (p *parser) closeFrame(h frameHandler) (*closeErr, bool) {
	b := p.ctrl[:p.ctrlN]
	code := StatusNoStatusReceived
	switch {
	case len(b) == 1:
		return errCloseLen1, false
	case len(b) >= 2:
		code = StatusCode(binary.BigEndian.Uint16(b))
		if !code.Valid() {
			return errCloseCode, false
		}
		if !utf8.Valid(b[2:]) {
			return errBadReason, false
		}
		b = b[2:]
	}
	p.closed = true
	h.onClose(code, b)
	p.release()
	return nil, false
}

func (p *parser) fail(err *closeErr) *closeErr {
	p.err = err
	p.release()
	return err
}

// stop ends parsing after frameEnd or deliver: with a violation, or
// because the handler said so.
func (p *parser) stop(err *closeErr) *closeErr {
	if err != nil {
		return p.fail(err)
	}
	if !p.closed {
		p.closed = true
		p.release()
	}
	return nil
}

// release returns the message buffers to the pool between messages, so an
// idle connection holds none.
func (p *parser) release() {
	if p.buf != nil {
		bufpool.Put(p.buf)
		p.buf = nil
	}
	if p.out != nil {
		bufpool.Put(p.out)
		p.out = nil
	}
}
