// Package bufpool lends the byte slices that hold partial input and send
// queues, so that an idle connection holds none and steady state allocates
// nothing. The boxes the slices travel in are pooled too.
//
// Two size classes keep a small request from being lent a large buffer:
// up to smallMax (partial packets, short replies) and up to MaxPooled (the
// chunks of a long send queue).
package bufpool

import "sync"

// MaxPooled is the largest capacity kept: rare huge buffers go to the GC.
const MaxPooled = 64 << 10

// smallMax is the largest capacity of the small class.
const smallMax = 8 << 10

var (
	small = sync.Pool{New: func() any { b := make([]byte, 0, 4096); return &b }}
	large = sync.Pool{New: func() any { b := make([]byte, 0, MaxPooled); return &b }}
	boxes = sync.Pool{New: func() any { return new([]byte) }}
)

// Get returns an empty slice with room for at least size bytes: a 4 KiB
// one for sizes up to 4 KiB (append grows it), a pooled one up to
// MaxPooled, a new one beyond.
func Get(size int) []byte {
	var p *sync.Pool
	switch {
	case size > MaxPooled:
		return make([]byte, 0, size)
	case size > smallMax:
		p = &large
	default:
		p = &small
	}
	bp := p.Get().(*[]byte)
	b := (*bp)[:0]
	*bp = nil
	boxes.Put(bp)
	if cap(b) < size {
		b = make([]byte, 0, size) // a small-class buffer below size: replace it
	}
	return b
}

// Box returns an empty box for a slice, from the pool: a struct that
// rarely holds a slice keeps a pointer to one (8 bytes) instead of the
// slice (24).
func Box() *[]byte { return boxes.Get().(*[]byte) }

// PutBox gives a box back, without its slice (Put that apart, or keep it).
func PutBox(bp *[]byte) {
	*bp = nil
	boxes.Put(bp)
}

// Put gives b back; it must not be used afterwards.
func Put(b []byte) {
	var p *sync.Pool
	switch c := cap(b); {
	case c == 0 || c > MaxPooled:
		return
	case c > smallMax:
		p = &large
	default:
		p = &small
	}
	bp := boxes.Get().(*[]byte)
	*bp = b[:0]
	p.Put(bp)
}

// Unfinished input: the start of a packet (or request) that has not fully
// arrived waits in a buffer of its connection. The loop's protocols and the
// HTTP server keep it the same way, here.

// AppendInput appends data to in, the start of an unfinished packet. It
// grows in by doubling, but to no more than whole when the packet's length
// is known (whole > 0), and never past limit plus this read: a packet that
// never completes holds about its limit before it is refused, however it
// trickles in.
func AppendInput(in, data []byte, whole, limit int) []byte {
	need := len(in) + len(data)
	if need <= cap(in) {
		return append(in, data...)
	}
	size := max(2*cap(in), need)
	if whole >= need {
		size = min(size, whole)
	}
	size = min(size, max(need, limit+len(data)))
	return append(append(make([]byte, 0, size), in...), data...)
}

// KeepInput keeps rest, what a read left unfinished, as a connection's
// input buffer, given the buffer in it had: rest is either a tail of in
// (moved to its front) or, when in is empty, of the read buffer (copied to
// a pooled buffer). Nothing left gives in back to the pool and returns nil.
func KeepInput(in, rest []byte, limit int) []byte {
	switch {
	case len(rest) == 0:
		Put(in)
		return nil
	case len(in) > 0:
		return in[:copy(in, rest)]
	}
	return AppendInput(Get(len(rest)), rest, 0, limit)
}
