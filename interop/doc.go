// Package interop runs herd's example servers against clients no one here
// wrote: Go's net/http client, wrk, gorilla/websocket and headless Chromium.
// It is its own module so that the core module keeps golang.org/x/sys as its
// only dependency.
//
// The tests build the examples, start them on loopback port 0 and read the
// address from the first line they print. wrk and Chromium come from the
// system (Debian's wrk and chromium packages; .ci/run installs them); a test
// whose tool is missing is skipped, or fails when CI is set.
package interop
