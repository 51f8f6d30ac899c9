//go:build linux || darwin || freebsd

package herd

import "testing"

// FuzzScanHello: scanHello never panics, and its answer does not change
// as more bytes come: an error on a prefix is an error on the whole, and
// a hello whole in a prefix is whole in the whole; a whole hello starts
// with a handshake record.
func FuzzScanHello(f *testing.F) {
	f.Add([]byte{22, 3, 1, 0, 4, 1, 0, 0, 0})
	f.Add([]byte{22, 3, 1, 0, 2, 1, 0, 22, 3, 1, 0, 3, 0, 0, 1, 0xff})
	f.Add([]byte{22, 3, 1, 0, 4, 1, 0, 0xff, 0xfb})
	f.Add([]byte("GET / HTTP/1.1\r\n"))
	f.Add([]byte{22, 3, 3, 0x40, 0x01})
	f.Fuzz(func(t *testing.T, b []byte) {
		complete, err := scanHello(b)
		if complete && (err != nil || b[0] != recordTypeHandshake) {
			t.Fatalf("complete with %v, first byte %d", err, b[0])
		}
		for _, k := range []int{0, 1, 4, 5, 6, 9, len(b) / 2, len(b) - 1} {
			if k < 0 || k > len(b) {
				continue
			}
			c, e := scanHello(b[:k])
			if e != nil && err == nil {
				t.Fatalf("an error on %d of %d bytes (%v), none on all", k, len(b), e)
			}
			if c && !complete {
				t.Fatalf("whole at %d of %d bytes, not at all of them", k, len(b))
			}
		}
	})
}

// TestScanHello: the cases admission turns on.
func TestScanHello(t *testing.T) {
	for _, tc := range []struct {
		name     string
		b        []byte
		complete bool
		err      bool
	}{
		{"nothing", nil, false, false},
		{"a record header", []byte{22, 3, 1, 0, 8}, false, false},
		{"a whole record, half a hello", []byte{22, 3, 1, 0, 4, 1, 0, 0, 8}, false, false},
		{"a hello of 4 bytes' body", []byte{22, 3, 1, 0, 8, 1, 0, 0, 4, 9, 9, 9, 9}, true, false},
		{"a hello over two records", []byte{22, 3, 1, 0, 6, 1, 0, 0, 4, 9, 9, 22, 3, 1, 0, 2, 9, 9}, true, false},
		{"the same, its second record unfinished", []byte{22, 3, 1, 0, 6, 1, 0, 0, 4, 9, 9, 22, 3, 1, 0, 2, 9}, false, false},
		{"an alert first", []byte{21, 3, 1, 0, 2, 2, 40}, false, true},
		{"an empty record", []byte{22, 3, 1, 0, 0}, false, true},
		{"a record over 2^14", []byte{22, 3, 1, 0x40, 0x01}, false, true},
		{"SSL 2", []byte{22, 2, 0, 0, 4}, false, true},
		{"not a ClientHello", []byte{22, 3, 1, 0, 4, 2, 0, 0, 0}, false, true},
		{"a hello of 64 KiB", []byte{22, 3, 1, 0, 4, 1, 0, 0xff, 0xfb}, false, true},
		{"a hello of exactly 16 KiB", []byte{22, 3, 1, 0x40, 0x00, 1, 0, 0x3f, 0xfc}, false, false},
		{"one byte more", []byte{22, 3, 1, 0x40, 0x00, 1, 0, 0x3f, 0xfd}, false, true},
	} {
		complete, err := scanHello(tc.b)
		if complete != tc.complete || (err != nil) != tc.err {
			t.Errorf("%s: complete %v, err %v; want %v, error %v", tc.name, complete, err, tc.complete, tc.err)
		}
	}
}
