package balancer

import (
	"io"
	"log/slog"

	"github.com/seed358e4494/herd/internal/herdtest"
)

var (
	quiet       = slog.New(slog.NewTextHandler(io.Discard, nil))
	refusedAddr = herdtest.RefusedAddr
)
