// Package soak says whether the tests that load, churn or stream for long
// run at full size. By default they run small, so that the README's test
// command stays quick for a contributor; HERD_SOAK=1 runs them whole, and
// CI sets it.
package soak

import "os"

// Enabled reports whether HERD_SOAK is set to anything but "" or "0".
func Enabled() bool {
	v := os.Getenv("HERD_SOAK")
	return v != "" && v != "0"
}
