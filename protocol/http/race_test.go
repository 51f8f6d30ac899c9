//go:build race

package herdhttp

// raceDetector: the race detector slows compress/flate about tenfold, so
// the longest tests scale down under it (CI runs them whole without it).
const raceDetector = true
