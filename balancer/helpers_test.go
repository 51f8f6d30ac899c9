package balancer

import (
	"io"
	"log/slog"

	"github.com/seed358e4494/herd/internal/loopback"
)

var (
	quiet       = slog.New(slog.NewTextHandler(io.Discard, nil))
	refusedAddr = loopback.RefusedAddr
)
