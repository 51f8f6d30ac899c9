// Package redistest runs a redis-server, or a Redis Cluster of several,
// for tests and benchmarks: on free loopback ports, with no persistence,
// stopped by PID when the test ends.
package redistest

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Server is a redis-server started by Start.
type Server struct {
	Addr  string
	port  int
	dir   string
	cmd   *exec.Cmd
	done  chan struct{}
	extra []string // more arguments for redis-server
}

// Start runs redis-server, or skips the test where it is not installed
// (fails under CI, which is expected to have installed it).
func Start(t testing.TB) *Server {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("redis-server is not installed; .ci/run should have installed it")
		}
		t.Skip("redis-server is not installed")
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	s := &Server{Addr: "127.0.0.1:" + strconv.Itoa(port), port: port, dir: t.TempDir()}
	s.start(t)
	t.Cleanup(func() { s.Stop(t) })
	return s
}

func (s *Server) start(t testing.TB) {
	t.Helper()
	s.cmd = exec.Command("redis-server", append([]string{"--port", strconv.Itoa(s.port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", s.dir, "--loglevel", "warning"}, s.extra...)...)
	s.cmd.Stderr = os.Stderr
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	s.done = make(chan struct{})
	go func() { s.cmd.Wait(); close(s.done) }()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if c, err := net.Dial("tcp", s.Addr); err == nil {
			fmt.Fprint(c, "PING\r\n")
			b := make([]byte, 7)
			c.SetReadDeadline(time.Now().Add(time.Second))
			n, _ := c.Read(b)
			c.Close()
			if string(b[:n]) == "+PONG\r\n" {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("redis-server on %s did not answer within 10s", s.Addr)
		}
	}
}

// Stop kills the server (SIGKILL: a crash, not a clean shutdown) and
// waits for it. Stopping a stopped server does nothing.
func (s *Server) Stop(t testing.TB) {
	if s.cmd == nil {
		return
	}
	s.cmd.Process.Signal(syscall.SIGKILL)
	select {
	case <-s.done:
	case <-time.After(10 * time.Second):
		t.Errorf("redis-server (pid %d) did not exit", s.cmd.Process.Pid)
	}
	s.cmd = nil
}

// PID is the server process's ID (0 while stopped).
func (s *Server) PID() int {
	if s.cmd == nil {
		return 0
	}
	return s.cmd.Process.Pid
}

// Restart starts the server again on the same port, empty.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	s.Stop(t)
	s.start(t)
}

// Cluster is a Redis Cluster started by StartCluster.
type Cluster struct {
	Addrs    []string // the masters' addresses, as created
	Replicas []string // the replicas' addresses
	servers  []*Server
}

// StartCluster runs masters redis-server processes in cluster mode, and
// replicas more for each master, on free loopback ports, and joins them
// into one cluster with redis-cli --cluster create (the slots split
// evenly; a node that is down for 2 s fails over to its replica); it
// returns once every node reports cluster_state:ok (and every replica
// its link to its master up), and stops them by
// PID when the test ends. It skips (fails under CI) where redis-server or
// redis-cli is missing.
func StartCluster(t testing.TB, masters, replicas int) *Cluster {
	t.Helper()
	for _, bin := range []string{"redis-server", "redis-cli"} {
		if _, err := exec.LookPath(bin); err != nil {
			if os.Getenv("CI") != "" {
				t.Fatalf("%s is not installed; .ci/run should have installed it", bin)
			}
			t.Skipf("%s is not installed", bin)
		}
	}
	c := &Cluster{}
	var all []string
	for i := range masters * (1 + replicas) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		s := &Server{Addr: "127.0.0.1:" + strconv.Itoa(port), port: port, dir: t.TempDir(),
			extra: []string{"--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "2000",
				// A replica may take over however old its data: a test's
				// master is killed moments after it was made.
				"--cluster-replica-validity-factor", "0"}}
		s.start(t)
		t.Cleanup(func() { s.Stop(t) })
		c.servers = append(c.servers, s)
		all = append(all, s.Addr)
		if i < masters {
			c.Addrs = append(c.Addrs, s.Addr)
		} else {
			c.Replicas = append(c.Replicas, s.Addr)
		}
	}
	// redis-cli makes the first addresses given the masters.
	args := append([]string{"--cluster", "create"}, all...)
	out, err := exec.Command("redis-cli", append(args, "--cluster-replicas", strconv.Itoa(replicas), "--cluster-yes")...).CombinedOutput()
	if err != nil {
		t.Fatalf("redis-cli --cluster create: %v\n%s", err, out)
	}
	for _, addr := range all {
		for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
			info, _ := exec.Command("redis-cli", "-h", "127.0.0.1", "-p", addr[len("127.0.0.1:"):], "cluster", "info").Output()
			repl, _ := exec.Command("redis-cli", "-h", "127.0.0.1", "-p", addr[len("127.0.0.1:"):], "info", "replication").Output()
			synced := !strings.Contains(string(repl), "role:slave") || strings.Contains(string(repl), "master_link_status:up")
			if strings.Contains(string(info), "cluster_state:ok") && synced {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("the cluster node %s is not ok within 20s:\n%s", addr, info)
			}
		}
	}
	return c
}

// Kill kills the cluster's server at addr (SIGKILL) and waits for it.
func (c *Cluster) Kill(t testing.TB, addr string) {
	t.Helper()
	for _, s := range c.servers {
		if s.Addr == addr {
			s.Stop(t)
			return
		}
	}
	t.Fatalf("no cluster server at %s", addr)
}

// Stop kills the cluster's servers (SIGKILL) and waits for them.
// Stopping a stopped cluster does nothing.
func (c *Cluster) Stop(t testing.TB) {
	for _, s := range c.servers {
		s.Stop(t)
	}
}
