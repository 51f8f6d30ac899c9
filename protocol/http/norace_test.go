//go:build !race

package herdhttp

const raceDetector = false
