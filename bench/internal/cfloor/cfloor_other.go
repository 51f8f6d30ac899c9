//go:build !(linux && cgo)

package cfloor

import "errors"

// Available reports whether this build has the C server: Linux with cgo only.
const Available = false

// Server is the C server, absent from this build.
type Server struct{}

// Start fails: the C server needs Linux and cgo.
func Start(loops int, http bool) (*Server, error) {
	return nil, errors.New("cfloor: linux with cgo only")
}

// StartUDP fails: the C server needs Linux and cgo.
func StartUDP(loops int) (string, error) {
	return "", errors.New("cfloor: linux with cgo only")
}

func (s *Server) Addr() string  { return "" }
func (s *Server) Loops() []Loop { return nil }
func (s *Server) Active() int   { return 0 }
func (s *Server) Stop()         {}
