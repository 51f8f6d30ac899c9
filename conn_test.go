//go:build linux || darwin || freebsd

package herd

import (
	"testing"
	"unsafe"
)

// An idle connection's whole cost is its Conn: keep it in the 192-byte
// size class (what few connections use lives in connRare, the send queue
// exists only while something is queued).
func TestConnSize(t *testing.T) {
	if n := unsafe.Sizeof(Conn{}); n > 192 {
		t.Errorf("Conn is %d bytes, over the 192-byte size class", n)
	}
}
