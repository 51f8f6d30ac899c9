//go:build linux

package herd

// Pipe's zero-copy path (PipeOptions.Splice): the bytes go from one
// socket to the other through a kernel pipe with splice(2), never through
// user space. Written here against the loop, since a proxy's
// readiness-driven splicing is not something a library offers: the two
// pitfalls other proxies met are handled explicitly. A kernel pipe that
// the destination has not emptied stops the source being read (else a
// level-triggered poller reports it readable again and again while the
// pipe is full), and the pipe's bytes count in the destination's queue, so
// that a half-close or a close waits for them like for any queued bytes.

import (
	"errors"

	"golang.org/x/sys/unix"

	"github.com/seed358e4494/herd/internal/poll"
	"github.com/seed358e4494/herd/internal/sock"
)

const spliceSupported = true

// spliceChunk is what one splice from a socket asks for: a pipe's
// capacity.
const spliceChunk = pipeSize

// pipeSize is the capacity asked of each kernel pipe (F_SETPIPE_SZ; the
// default is 64 KiB). Fewer, larger splices, and fewer pauses of the
// source while the destination catches up: in the bulk benchmark
// (bench/README.md), 256 KiB took the proxy's CPU per GiB forwarded from
// a median of 160 ms (145 to 200, five runs) to 120 ms (95 to 135, four).
// The kernel allocates a pipe's pages as bytes come, so an idle or small
// transfer does not pay for the capacity. Where the limit
// (/proc/sys/fs/pipe-max-size) refuses it, the pipe keeps its size.
const pipeSize = 256 << 10

// maxPooledPipes bounds the empty kernel pipes a loop keeps for reuse
// (each holds two descriptors). A pipe is held only while bytes are in it:
// an idle spliced connection costs no more descriptors than a copied one.
const maxPooledPipes = 32

// kernelPipe holds spliced bytes on their way to a connection's socket.
type kernelPipe struct {
	r, w int
	n    int // bytes in it
}

// takePipe gives an empty kernel pipe, from the loop's pool if it has one.
func (l *Loop) takePipe() (*kernelPipe, error) {
	if k := len(l.pipes); k > 0 {
		kp := l.pipes[k-1]
		l.pipes = l.pipes[:k-1]
		return kp, nil
	}
	r, w, err := sock.Pipe(pipeSize)
	if err != nil {
		return nil, err
	}
	return &kernelPipe{r: r, w: w}, nil
}

// putPipe keeps an empty pipe for reuse, or closes it; on the loop.
func (l *Loop) putPipe(kp *kernelPipe) {
	if kp.n == 0 && len(l.pipes) < maxPooledPipes && !l.draining {
		l.pipes = append(l.pipes, kp)
		return
	}
	kp.close()
}

func (kp *kernelPipe) close() {
	sock.Close(kp.r)
	sock.Close(kp.w)
}

// closePipes closes the loop's pool when it exits.
func (l *Loop) closePipes() {
	for _, kp := range l.pipes {
		kp.close()
	}
	l.pipes = nil
}

// writeTo splices what the pipe holds to fd, until the socket takes no
// more; under the connection's mu, as writes are.
func (kp *kernelPipe) writeTo(fd int) (int, error) {
	done := 0
	for kp.n > 0 {
		m, err := sock.Splice(kp.r, fd, kp.n)
		if m > 0 {
			kp.n -= m
			done += m
		}
		switch {
		case err == unix.EAGAIN:
			return done, nil
		case err != nil:
			return done, err
		case m == 0:
			return done, nil
		}
	}
	return done, nil
}

// spliceRead moves what src's socket holds to e's other connection
// through a kernel pipe, and reports whether it handled the read; false
// sends it down the copying path (the destination has bytes queued in
// user space, which must go first, or cannot take bytes now).
func (l *Loop) spliceRead(src *Conn, e *pipeEnd) bool {
	dst := e.other
	dst.mu.Lock()
	if dst.state.Load() != connOpen || dst.flags.Load()&(flagWriteShut|flagConnecting|flagMoving) != 0 || dst.q != nil || dst.rare == nil {
		dst.mu.Unlock()
		return false
	}
	kp := dst.rare.kp
	if kp == nil {
		var err error
		if kp, err = l.takePipe(); err != nil {
			dst.mu.Unlock()
			return false // out of descriptors, say: copying still works
		}
		dst.rare.kp = kp
	}
	if kp.n > 0 {
		dst.mu.Unlock()
		return false // src should be paused until the pipe drains
	}
	n, err := sock.Splice(int(src.fd), kp.w, spliceChunk)
	if n <= 0 {
		dst.mu.Unlock()
		switch {
		case err == unix.EAGAIN:
		case err == nil && sock.AtUrgentMark(int(src.fd)):
			// Not the end: the urgent byte stops splice(2) short of
			// what follows it, once the peer has ended (see urgent).
			e.splice, e.bulk = false, false
			return false
		case err == nil: // end of stream
			l.peerEnded(src)
		case errors.Is(err, unix.ECONNRESET):
			l.closeConn(src, nil)
		default:
			l.closeConn(src, err)
		}
		return true
	}
	kp.n = n
	e.bulk = n >= spliceFrom
	l.bytesIn.Add(uint64(n))
	l.spliced.Add(uint64(n))
	l.messagesIn.Add(1)
	l.sendQueued.Add(int64(n))
	m, err := kp.writeTo(int(dst.fd))
	if m > 0 {
		l.bytesOut.Add(uint64(m))
		l.sendQueued.Add(-int64(m))
	}
	if err != nil {
		dst.brokenLocked()
		dst.mu.Unlock()
		l.closeConn(dst, err)
		return true
	}
	pending := kp.n > 0
	if pending {
		dst.updateInterestLocked()
	} else {
		dst.rare.kp = nil // an idle connection holds no pipe
		l.putPipe(kp)
	}
	dst.mu.Unlock()
	now := l.now.UnixNano()
	src.lastActive = now
	if n < spliceChunk {
		src.drainedTurn = l.turn
	}
	e.forwarded(n)
	if dst.Loop() == l {
		dst.lastActive = now
	}
	if pending {
		src.waitFor(dst) // resuming asks the poller again
	} else {
		// A short splice may have stopped at a full pipe (64 slots, which
		// small segments fill before 256 KiB) rather than an empty
		// socket: look again next turn, as nothing else would.
		l.serveNextTurn(src, poll.Event{Fd: int(src.fd), Readable: true})
	}
	return true
}
