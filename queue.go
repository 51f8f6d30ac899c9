//go:build linux || darwin || freebsd

package herd

import (
	"sync"

	"golang.org/x/sys/unix"

	"github.com/seed358e4494/herd/internal/bufpool"
	"github.com/seed358e4494/herd/internal/sock"
)

// sendQueue is what a connection still has to write: a list of buffers,
// written in order with one writev. Small sends are copied into pooled
// buffers of at most bufpool.MaxPooled bytes; a large one is copied by its
// sender before any lock is taken and joins the list as it is, so a lock
// is never held across a large copy. A connection holds a queue only while
// something waits in it: an idle connection costs a nil pointer.
type sendQueue struct {
	bufs [][]byte // bufs[0][head:] goes out first
	head int
	n    int // bytes queued
}

var queuePool = sync.Pool{New: func() any { return new(sendQueue) }}

func newSendQueue() *sendQueue { return queuePool.Get().(*sendQueue) }

// free gives the queue and its buffers back; q must not be used afterwards.
func (q *sendQueue) free() {
	for i, b := range q.bufs {
		bufpool.Put(b)
		q.bufs[i] = nil
	}
	q.bufs = q.bufs[:0]
	q.head, q.n = 0, 0
	queuePool.Put(q)
}

// push copies b to the end of the queue: into the room the last buffer
// has (never growing it, which would copy it), then into new buffers, of
// b's size for a queue's first and of bufpool.MaxPooled for the next ones,
// so that a queue that keeps growing needs few buffers and few iovecs.
func (q *sendQueue) push(b []byte) {
	q.n += len(b)
	if k := len(q.bufs); k > 0 {
		last := q.bufs[k-1]
		if cap(last) <= bufpool.MaxPooled { // not a large sender's own copy
			m := min(cap(last)-len(last), len(b))
			q.bufs[k-1] = append(last, b[:m]...)
			b = b[m:]
		}
	}
	for len(b) > 0 {
		size := bufpool.MaxPooled
		if len(q.bufs) == 0 {
			size = min(len(b), size)
		}
		buf := bufpool.Get(size)
		m := min(cap(buf), len(b))
		q.bufs = append(q.bufs, append(buf, b[:m]...))
		b = b[m:]
	}
}

// pushOwned appends b itself: the queue owns it from now on.
func (q *sendQueue) pushOwned(b []byte) {
	if len(b) == 0 {
		return
	}
	q.n += len(b)
	q.bufs = append(q.bufs, b)
}

// maxIovecs bounds the buffers one writev takes.
const maxIovecs = sock.MaxIovecs

// maxFlush bounds what one writable event writes of one connection, so a
// fast reader of a large queue does not keep its loop from the others: the
// poller reports the socket writable again.
const maxFlush = 1 << 20

// writeTo writes from the front of the queue until the socket would block,
// the queue is empty or maxFlush is written, and drops what was written.
func (q *sendQueue) writeTo(fd int) (int, error) {
	written := 0
	var vec [maxIovecs][]byte
	for q.n > 0 && written < maxFlush {
		k, room := 0, maxFlush-written
		for i := 0; i < len(q.bufs) && k < maxIovecs && room > 0; i++ {
			b := q.bufs[i]
			if i == 0 {
				b = b[q.head:]
			}
			if len(b) > room {
				b = b[:room]
			}
			room -= len(b)
			vec[k] = b
			k++
		}
		n, err := sock.Writev(fd, vec[:k])
		if n > 0 {
			written += n
			q.consume(n)
		}
		clear(vec[:k])
		switch err {
		case nil, unix.EINTR:
		case unix.EAGAIN:
			return written, nil
		default:
			return written, err
		}
	}
	return written, nil
}

// consume drops n written bytes from the front.
func (q *sendQueue) consume(n int) {
	q.n -= n
	i := 0
	for n > 0 {
		rest := len(q.bufs[i]) - q.head
		if n < rest {
			q.head += n
			break
		}
		n -= rest
		bufpool.Put(q.bufs[i])
		q.bufs[i] = nil
		q.head = 0
		i++
	}
	if i > 0 {
		k := copy(q.bufs, q.bufs[i:])
		clear(q.bufs[k:])
		q.bufs = q.bufs[:k]
	}
}
