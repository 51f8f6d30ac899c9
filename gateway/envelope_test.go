//go:build linux || darwin || freebsd

package gateway

import (
	"bytes"
	"reflect"
	"testing"
)

func TestEnvelopeRoundTrip(t *testing.T) {
	for _, e := range []envelope{
		{node: "a", epoch: 1, seq: 1, kind: kindAll, payload: []byte("hi")},
		{node: "node-1.example", epoch: 1 << 60, seq: 1 << 40, kind: kindGroup, target: "room", exclude: []ClientID{"a-2k7x9q0v3mzp1-1", "b-3w5e11264sgsf-ff"}, payload: []byte{}},
		{node: "n", epoch: 0, seq: 0, kind: kindClose, target: "n-3"},
		{node: "n", epoch: 1<<64 - 1, seq: 2, kind: kindClient, target: "n-3w5e11264sgsf-3", payload: []byte("to a client")},
	} {
		got, err := decodeEnvelope(e.encode())
		if err != nil {
			t.Fatalf("%+v: %v", e, err)
		}
		if len(got.payload) == 0 {
			got.payload, e.payload = nil, nil
		}
		if !reflect.DeepEqual(got, e) {
			t.Errorf("round trip: %+v, want %+v", got, e)
		}
	}
	for _, bad := range []string{"", "HGW", "HGW1", "HGW1\x00", "HGW1\x07", "HGW1\x01\x01\x01\x00", "HGW1\x01\xff", "HGW1\x03\x01\x01\x01a\x05ab", "XGW1\x01\x01\x01\x01a\x00\x00"} {
		if _, err := decodeEnvelope([]byte(bad)); err == nil {
			t.Errorf("%q decoded", bad)
		}
	}
}

// FuzzEnvelope: whatever arrives on the channels, decoding returns an
// error or an envelope that encodes back to the same bytes; it never
// panics, and never allocates beyond the input's size.
func FuzzEnvelope(f *testing.F) {
	f.Add((&envelope{node: "a", epoch: 7, seq: 9, kind: kindGroup, target: "room", exclude: []ClientID{"a-7-1"}, payload: []byte("hello")}).encode())
	f.Add((&envelope{node: "one", epoch: 1<<64 - 1, seq: 1, kind: kindClient, target: "one-3w5e11264sgsf-1f", payload: []byte("hi")}).encode())
	f.Add((&envelope{node: "b", kind: kindUid, target: "alice"}).encode())
	f.Add([]byte("HGW1\x03\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff"))
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := decodeEnvelope(b)
		if err != nil {
			return
		}
		if len(e.exclude) > len(b) {
			t.Fatalf("%d exclusions from %d bytes", len(e.exclude), len(b))
		}
		again := e.encode()
		e2, err := decodeEnvelope(again)
		if err != nil {
			t.Fatalf("re-encoded envelope does not decode: %v", err)
		}
		if !bytes.Equal(e2.encode(), again) {
			t.Fatal("encode is not stable")
		}
	})
}
