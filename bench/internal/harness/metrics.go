package harness

import (
	"math"
	"math/bits"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// Usage is what getrusage(RUSAGE_SELF) says of this process: the server's
// own CPU time and voluntary context switches, since the load generator runs
// in a child process.
type Usage struct {
	CPU    time.Duration // user + system
	VolCSW int64         // voluntary context switches: thread wake-ups
}

// SelfUsage reads getrusage(RUSAGE_SELF).
func SelfUsage() Usage {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		return Usage{}
	}
	cpu := time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	return Usage{CPU: cpu, VolCSW: ru.Nvcsw}
}

// Sub is u - v.
func (u Usage) Sub(v Usage) Usage {
	return Usage{CPU: u.CPU - v.CPU, VolCSW: u.VolCSW - v.VolCSW}
}

// RSS is the resident set size of this process in bytes (/proc/self/statm).
func RSS() int64 {
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) < 2 {
		return 0
	}
	pages, _ := strconv.ParseInt(f[1], 10, 64)
	return pages * int64(os.Getpagesize())
}

// Jain is Jain's fairness index (Σx)²/(n·Σx²): 1 when every loop did the
// same work, 1/n when one loop did all of it. NaN for no loops.
func Jain(x []uint64) float64 {
	if len(x) == 0 {
		return math.NaN()
	}
	var sum, sq float64
	for _, v := range x {
		f := float64(v)
		sum += f
		sq += f * f
	}
	if sq == 0 {
		return 1
	}
	return sum * sum / (float64(len(x)) * sq)
}

// Hist is a log-linear latency histogram in nanoseconds: 32 buckets per
// power of two, so a quantile is within about 3% of the true value. Adding
// a sample does not allocate.
type Hist struct {
	Counts [histBuckets]uint64
}

const (
	histSub     = 5
	histBuckets = (64 - histSub + 1) << histSub
)

func histIndex(v uint64) int {
	if v < 1<<histSub {
		return int(v)
	}
	k := bits.Len64(v) - 1 // v in [2^k, 2^(k+1))
	m := v >> (k - histSub)
	return (k-histSub+1)<<histSub + int(m-1<<histSub)
}

// histValue is the middle of bucket i.
func histValue(i int) float64 {
	if i < 1<<histSub {
		return float64(i)
	}
	e := i >> histSub
	m := uint64(i&(1<<histSub-1)) + 1<<histSub
	lo := m << (e - 1)
	return float64(lo) + float64(uint64(1)<<(e-1))/2
}

// Add records one sample.
func (h *Hist) Add(d time.Duration) {
	if d < 0 {
		d = 0
	}
	h.Counts[histIndex(uint64(d))]++
}

// AddConcurrent records one sample; safe with other AddConcurrent calls
// (not with Quantile or Merge).
func (h *Hist) AddConcurrent(d time.Duration) {
	if d < 0 {
		d = 0
	}
	atomic.AddUint64(&h.Counts[histIndex(uint64(d))], 1)
}

// Merge adds o's samples to h.
func (h *Hist) Merge(o *Hist) {
	for i, c := range o.Counts {
		h.Counts[i] += c
	}
}

// Quantile is the q-quantile (0 < q ≤ 1), 0 with no samples.
func (h *Hist) Quantile(q float64) time.Duration {
	var n uint64
	for _, c := range h.Counts {
		n += c
	}
	if n == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(n)))
	if rank == 0 {
		rank = 1
	}
	var acc uint64
	for i, c := range h.Counts {
		acc += c
		if acc >= rank {
			return time.Duration(histValue(i))
		}
	}
	return 0
}
