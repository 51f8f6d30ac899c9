//go:build linux || darwin || freebsd

package herd

// A Worker's shape: which callbacks can run for its network, and who
// serves its connections when a package built on herd (an HTTP server, a
// balancer) attaches to it. One rule for every such package, checked at
// Attach and again at Listen, so that a callback that would never run or a
// second server that would silently win is an error naming the field.

import "fmt"

// Claim gives the worker's connections to a server built on herd that
// takes every connection's input itself (protocol/http's Server, the
// balancer): their Attach calls it before changing w. name says who
// claims, in errors. Claim fails, naming the field or the earlier
// claimant, when:
//
//   - the worker is already running (attach before Run);
//   - its address is not a stream (udp://): no connections to serve;
//   - Protocol, OnMessage or OnPacket is set: the server reads the raw
//     stream, so they would never run;
//   - another server has claimed it: only one can read a connection.
//
// OnConnect, OnClose and the other callbacks stay the application's (the
// server chains OnConnect and OnWorkerStart after its own). Safe from any
// goroutine; a claim is for the Worker's lifetime.
func (w *Worker) Claim(name string) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.state != stateNew && w.state != stateListening {
		return fmt.Errorf("herd: %s: the worker is running or closed; attach before Run", name)
	}
	ep, err := parseAddr(w.Addr)
	if err != nil {
		return err
	}
	switch {
	case ep.network == "udp":
		return fmt.Errorf("herd: %s serves streams; Worker.Addr %q is udp://", name, w.Addr)
	case w.Protocol != nil || ep.proto != nil:
		return fmt.Errorf("herd: %s reads the raw stream; the worker has a Protocol (Worker.Protocol or Addr %q)", name, w.Addr)
	case w.OnMessage != nil:
		return fmt.Errorf("herd: %s takes every connection's input; Worker.OnMessage is set and would never run", name)
	case w.OnPacket != nil:
		return fmt.Errorf("herd: Worker.OnPacket is set and would never run: %s serves streams", name)
	case w.claimedBy != "":
		return fmt.Errorf("herd: %s: the worker is already served by %s", name, w.claimedBy)
	}
	w.claimedBy = name
	return nil
}

// checkShape refuses callbacks that cannot run for the worker's network:
// a udp:// worker delivers datagrams to OnPacket alone, and has no
// connections to connect, close or queue for; a stream worker never calls
// OnPacket.
func (w *Worker) checkShape(ep endpoint) error {
	if ep.network != "udp" {
		if w.OnPacket != nil {
			return fmt.Errorf("herd: Worker.OnPacket is set and would never run: %q is a stream address (OnPacket is for udp://)", w.Addr)
		}
		// Set after the server's Attach: the same rule as Claim's.
		switch {
		case w.claimedBy != "" && (w.Protocol != nil || ep.proto != nil):
			return fmt.Errorf("herd: %s reads the raw stream; the worker has a Protocol (Worker.Protocol or Addr %q), set after Attach", w.claimedBy, w.Addr)
		case w.claimedBy != "" && w.OnMessage != nil:
			return fmt.Errorf("herd: %s takes every connection's input; Worker.OnMessage, set after Attach, would never run", w.claimedBy)
		}
		return nil
	}
	if w.OnPacket == nil {
		return fmt.Errorf("herd: a udp:// worker needs Worker.OnPacket: nothing would receive the datagrams to %q", w.Addr)
	}
	for _, f := range []struct {
		name string
		set  bool
	}{
		{"OnConnect", w.OnConnect != nil},
		{"OnMessage", w.OnMessage != nil},
		{"OnClose", w.OnClose != nil},
		{"OnError", w.OnError != nil},
		{"OnBufferFull", w.OnBufferFull != nil},
		{"OnBufferDrain", w.OnBufferDrain != nil},
	} {
		if f.set {
			return fmt.Errorf("herd: Worker.%s is set and would never run: a udp:// worker has no connections (datagrams go to OnPacket)", f.name)
		}
	}
	return nil
}
