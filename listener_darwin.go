package herd

import "golang.org/x/sys/unix"

// soReusePort is never used to balance on darwin: see reusePortBalances.
const soReusePort = unix.SO_REUSEPORT
