//go:build darwin || freebsd

package herd

// splice(2) is Linux's: elsewhere Pipe copies.

const spliceSupported = false

type kernelPipe struct{ n int }

func (kp *kernelPipe) writeTo(int) (int, error) { return 0, nil }
func (kp *kernelPipe) close()                   {}
func (l *Loop) putPipe(*kernelPipe)             {}
func (l *Loop) closePipes()                     {}
func (l *Loop) spliceRead(*Conn, *pipeEnd) bool { return false }
