//go:build linux || darwin || freebsd

package herd

// Internals that the external tests (package herd_test) look at.

// HandshakeGoroutines is how many of w's handshake goroutines hold a slot
// (compute), and how many there are in all (parked ones and those waiting
// to resume too).
func HandshakeGoroutines(w *Worker) (running, all int) {
	h := w.handshakes()
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.running, h.running + h.parked + h.resuming
}

// HandshakeInput is the bytes w's TLS connections hold unread during
// their handshakes.
func HandshakeInput(w *Worker) int64 { return w.hsInput.Load() }

// HandshakeBudget is the worker's budget of handshake input now.
func HandshakeBudget() int64 { return handshakeBudget }

// SetHandshakeBudget changes the budget for a test and returns what undoes
// it.
func SetHandshakeBudget(n int64) (restore func()) {
	old := handshakeBudget
	handshakeBudget = n
	return func() { handshakeBudget = old }
}

// LoopThread is the OS thread l is locked to (0 where threads are not
// counted, or once it exited).
func LoopThread(l *Loop) int { return int(l.tid.Load()) }
