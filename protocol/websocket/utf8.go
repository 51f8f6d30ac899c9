package websocket

import "unicode/utf8"

// utf8State validates text that arrives in pieces: a text message split
// over frames, or a frame split over reads. It carries the bytes of a code
// point cut at the end of one piece over to the next, and rejects a piece as
// soon as it holds an invalid sequence, so a bad message is failed without
// waiting for its end. The bulk of each piece goes through utf8.Valid.
type utf8State struct {
	buf [4]byte
	n   int
}

func (s *utf8State) reset() { s.n = 0 }

// complete reports whether the text so far does not end inside a code point.
func (s *utf8State) complete() bool { return s.n == 0 }

// feed validates p as the continuation of the text so far.
func (s *utf8State) feed(p []byte) bool {
	if s.n > 0 {
		want := seqLen(s.buf[0])
		for s.n < want && len(p) > 0 {
			s.buf[s.n] = p[0]
			s.n++
			p = p[1:]
		}
		if s.n < want {
			return validPrefix(s.buf[:s.n])
		}
		if !utf8.Valid(s.buf[:want]) {
			return false
		}
		s.n = 0
	}
	// A code point cut at the end starts within the last three bytes.
	t := len(p)
	for i := len(p) - 1; i >= 0 && i >= len(p)-3; i-- {
		if p[i]&0xc0 != 0x80 {
			if seqLen(p[i]) > len(p)-i {
				t = i
			}
			break
		}
	}
	if !utf8.Valid(p[:t]) {
		return false
	}
	s.n = copy(s.buf[:], p[t:])
	return s.n == 0 || validPrefix(s.buf[:s.n])
}

// seqLen is the length of the sequence that c starts, or 1 for a byte that
// cannot start one (utf8.Valid then rejects it).
func seqLen(c byte) int {
	switch {
	case c >= 0xc2 && c <= 0xdf:
		return 2
	case c >= 0xe0 && c <= 0xef:
		return 3
	case c >= 0xf0 && c <= 0xf4:
		return 4
	}
	return 1
}

// validPrefix reports whether b, shorter than the sequence its first byte
// starts, can still become a valid code point.
func validPrefix(b []byte) bool {
	if len(b) < 2 {
		return true
	}
	lo, hi := byte(0x80), byte(0xbf)
	switch b[0] {
	case 0xe0:
		lo = 0xa0 // no overlong 3-byte forms
	case 0xed:
		hi = 0x9f // no surrogates
	case 0xf0:
		lo = 0x90 // no overlong 4-byte forms
	case 0xf4:
		hi = 0x8f // nothing above U+10FFFF
	}
	if b[1] < lo || b[1] > hi {
		return false
	}
	for _, c := range b[2:] {
		if c < 0x80 || c > 0xbf {
			return false
		}
	}
	return true
}
