package herd

import "golang.org/x/sys/unix"

// soReusePort is FreeBSD's load-balancing reuseport group (12.0+).
const soReusePort = unix.SO_REUSEPORT_LB
