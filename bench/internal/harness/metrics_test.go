package harness

import (
	"math"
	"testing"
	"time"
)

func TestHist(t *testing.T) {
	var h Hist
	for i := 1; i <= 1000; i++ {
		h.Add(time.Duration(i) * time.Microsecond)
	}
	for _, tc := range []struct {
		q    float64
		want time.Duration
	}{{0.5, 500 * time.Microsecond}, {0.99, 990 * time.Microsecond}, {1, 1000 * time.Microsecond}} {
		got := h.Quantile(tc.q)
		if math.Abs(float64(got-tc.want)) > 0.04*float64(tc.want) {
			t.Errorf("q%.2f = %v, want about %v", tc.q, got, tc.want)
		}
	}
	for v := uint64(0); v < 1<<20; v = v*9/8 + 1 {
		i := histIndex(v)
		if i < 0 || i >= histBuckets {
			t.Fatalf("index %d out of range for %d", i, v)
		}
		if c := histValue(i); math.Abs(c-float64(v)) > 0.035*float64(v)+1 {
			t.Errorf("value %d -> bucket %d -> %f", v, i, c)
		}
	}
}

func TestJain(t *testing.T) {
	if j := Jain([]uint64{5, 5, 5, 5}); j != 1 {
		t.Errorf("even: %f", j)
	}
	if j := Jain([]uint64{8, 0, 0, 0}); j != 0.25 {
		t.Errorf("one: %f", j)
	}
}
