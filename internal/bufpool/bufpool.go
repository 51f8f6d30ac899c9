// Package bufpool lends the byte slices that hold partial input and send
// queues, so that an idle connection holds none and steady state allocates
// nothing. The boxes the slices travel in are pooled too.
package bufpool

import "sync"

// MaxPooled is the largest capacity kept: rare huge buffers go to the GC.
const MaxPooled = 64 << 10

var (
	buffers = sync.Pool{New: func() any { b := make([]byte, 0, 4096); return &b }}
	boxes   = sync.Pool{New: func() any { return new([]byte) }}
)

// Get returns an empty slice with room for at least size bytes, or a
// 4 KiB one for sizes up to MaxPooled (append grows it).
func Get(size int) []byte {
	if size > MaxPooled {
		return make([]byte, 0, size)
	}
	bp := buffers.Get().(*[]byte)
	b := (*bp)[:0]
	*bp = nil
	boxes.Put(bp)
	return b
}

// Put gives b back; it must not be used afterwards.
func Put(b []byte) {
	if cap(b) == 0 || cap(b) > MaxPooled {
		return
	}
	bp := boxes.Get().(*[]byte)
	*bp = b[:0]
	buffers.Put(bp)
}
