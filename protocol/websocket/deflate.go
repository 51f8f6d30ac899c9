package websocket

import (
	"compress/flate"
	"io"
	"sync"

	"github.com/seed358e4494/herd/internal/bufpool"
)

// permessage-deflate (RFC 7692) on top of compress/flate.
//
// compress/flate's reader pulls from an io.Reader and cannot stop at the end
// of a message and carry on with the next one later without blocking, so
// each message is inflated whole once its last frame is in, by a pooled
// reader Reset with the peer's last 32 KiB of output as its dictionary when
// the peer keeps its context. Its writer can keep its context between
// messages: Flush ends each one with the 0x00 0x00 0xff 0xff marker the
// extension strips.

// windowSize is the LZ77 window of compress/flate: 2^15 bytes. Go's flate
// cannot use a smaller one, which decides what the negotiation accepts.
const windowSize = 1 << 15

// minCompressSize: shorter messages are sent uncompressed (RSV1 clear),
// which RFC 7692 allows message by message; deflate would only grow them.
const minCompressSize = 64

var (
	// deflateTail is what Flush ends a message with, and RFC 7692 strips.
	deflateTail = []byte{0x00, 0x00, 0xff, 0xff}
	// inflateTail puts the stripped marker back and adds an empty final
	// block, so the reader reports io.EOF at the end of the message.
	inflateTail = []byte{0x00, 0x00, 0xff, 0xff, 0x01, 0x00, 0x00, 0xff, 0xff}
)

// inflater decompresses the messages of one connection. Loop-owned.
type inflater struct {
	// takeover: the peer keeps its LZ77 window across messages, so the
	// last windowSize bytes of output are kept as the next dictionary.
	takeover bool
	window   []byte // up to 2*windowSize; its last windowSize bytes count
	src      sliceReader
}

// sliceReader reads a payload and then the tail; it is an io.ByteReader so
// that flate does not wrap it in a bufio.Reader.
type sliceReader struct{ a, b []byte }

func (s *sliceReader) Read(p []byte) (int, error) {
	if len(s.a) == 0 {
		s.a, s.b = s.b, nil
		if len(s.a) == 0 {
			return 0, io.EOF
		}
	}
	n := copy(p, s.a)
	s.a = s.a[n:]
	return n, nil
}

func (s *sliceReader) ReadByte() (byte, error) {
	if len(s.a) == 0 {
		s.a, s.b = s.b, nil
		if len(s.a) == 0 {
			return 0, io.EOF
		}
	}
	c := s.a[0]
	s.a = s.a[1:]
	return c, nil
}

// flateReaders pools decompressors (about 44 KiB each): a connection holds
// one only while it inflates a message.
var flateReaders sync.Pool

// inflate decompresses the payload of one message, appending to dst[:0].
// More than limit bytes of output (limit < 0: no limit) fail the message
// with 1009 as soon as they are produced: a small payload that inflates to
// gigabytes costs at most limit+1 bytes.
func (f *inflater) inflate(dst, in []byte, limit int64) ([]byte, *closeErr) {
	f.src = sliceReader{in, inflateTail}
	var dict []byte
	if f.takeover && len(f.window) > windowSize {
		dict = f.window[len(f.window)-windowSize:]
	} else if f.takeover {
		dict = f.window
	}
	var r io.ReadCloser
	if v := flateReaders.Get(); v != nil {
		r = v.(io.ReadCloser)
		r.(flate.Resetter).Reset(&f.src, dict)
	} else {
		r = flate.NewReaderDict(&f.src, dict)
	}
	out, err := readLimited(r, dst[:0], limit)
	f.src = sliceReader{}
	flateReaders.Put(r)
	if err != nil {
		return out, err
	}
	if f.takeover {
		f.remember(out)
	}
	return out, nil
}

func readLimited(r io.Reader, out []byte, limit int64) ([]byte, *closeErr) {
	for {
		if len(out) == cap(out) {
			if limit >= 0 && int64(len(out)) > limit {
				return out, errTooBig
			}
			n := max(2*cap(out), 4096)
			if limit >= 0 && int64(n) > limit+1 {
				n = int(limit + 1)
			}
			grown := make([]byte, len(out), n)
			copy(grown, out)
			bufpool.Put(out)
			out = grown
		}
		n, err := r.Read(out[len(out):cap(out)])
		out = out[:len(out)+n]
		if limit >= 0 && int64(len(out)) > limit {
			return out, errTooBig
		}
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return out, errBadDeflate
		}
	}
}

// remember keeps the last windowSize bytes of output as the next
// message's dictionary. The buffer holds up to two windows so the common
// small message costs an append, not a 32 KiB move.
func (f *inflater) remember(out []byte) {
	if len(out) >= windowSize {
		if f.window == nil {
			f.window = make([]byte, 0, 2*windowSize)
		}
		f.window = append(f.window[:0], out[len(out)-windowSize:]...)
		return
	}
	if f.window == nil {
		f.window = make([]byte, 0, 2*windowSize)
	}
	if len(f.window)+len(out) > cap(f.window) {
		keep := windowSize - len(out)
		f.window = f.window[:copy(f.window, f.window[len(f.window)-keep:])]
	}
	f.window = append(f.window, out...)
}

// deflater compresses the messages one connection sends. Used under the
// connection's write lock.
type deflater struct {
	// takeover: this side keeps its LZ77 window across messages, in a
	// writer of its own (made on the first compressed message). Otherwise
	// each message borrows a pooled writer, reset first.
	takeover bool
	level    int
	w        *flate.Writer
	sink     sliceWriter
}

type sliceWriter struct{ b []byte }

func (s *sliceWriter) Write(p []byte) (int, error) {
	s.b = append(s.b, p...)
	return len(p), nil
}

// flateWriters pools compressors by level (flate.HuffmanOnly to
// flate.BestCompression). Each is large: about 1.2 MiB at BestSpeed, 0.8 MiB
// at the other levels.
var flateWriters [flate.BestCompression - minLevel + 1]sync.Pool

const minLevel = flate.HuffmanOnly

// compressTo appends the compressed form of p, without the final
// 0x00 0x00 0xff 0xff, to dst. With takeover, w (persistent) is used;
// otherwise a pooled writer is reset first.
func compressTo(dst, p []byte, level int, w **flate.Writer, sink *sliceWriter, takeover bool) []byte {
	sink.b = dst
	fw := *w
	if !takeover {
		pool := &flateWriters[level-minLevel]
		if v := pool.Get(); v != nil {
			fw = v.(*flate.Writer)
			fw.Reset(sink)
		} else {
			fw, _ = flate.NewWriter(sink, level)
		}
	} else if fw == nil {
		fw, _ = flate.NewWriter(sink, level)
		*w = fw
	}
	fw.Write(p)
	fw.Flush()
	if !takeover {
		flateWriters[level-minLevel].Put(fw)
	}
	out := sink.b
	sink.b = nil
	if n := len(out); n-len(dst) >= 4 && string(out[n-4:]) == string(deflateTail) {
		out = out[:n-4]
	}
	return out
}

func (d *deflater) compress(dst, p []byte) []byte {
	return compressTo(dst, p, d.level, &d.w, &d.sink, d.takeover)
}
