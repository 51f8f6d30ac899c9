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
