//go:build linux || darwin || freebsd

// Command node is a gateway node for the redis module's tests and the
// bench module (package internal/node says what it does).
//
//	node -addr tcp://127.0.0.1:0 -redis 127.0.0.1:6379 -node a [-count N] [-uid-broadcast]
package main

import (
	"os"

	"github.com/seed358e4494/herd/redis/internal/node"
)

func main() { os.Exit(node.Main(os.Args[1:])) }
