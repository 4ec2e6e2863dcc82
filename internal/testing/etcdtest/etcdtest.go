// Package etcdtest runs a real etcd member for tests: embedded, on random
// loopback ports, in a temporary directory. It can stop the member, restart it
// on the same data (leases and keys survive) and wipe it (a new cluster with
// no leases), the etcd events that registrations must survive.
package etcdtest

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/workersd/workersd/internal/embedetcd"
	"github.com/workersd/workersd/internal/etcdclient"
)

// Server is one etcd member owned by a test.
type Server struct {
	t          testing.TB
	root       string
	clientAddr string
	peerAddr   string

	mu    sync.Mutex
	srv   *embedetcd.Server
	epoch int // bumped by Wipe: new data dir and cluster token
}

// Start launches a member and stops it when the test ends.
func Start(t testing.TB) *Server {
	t.Helper()
	s := &Server{t: t, root: t.TempDir(), clientAddr: FreeAddr(t), peerAddr: FreeAddr(t)}
	s.start()
	t.Cleanup(s.Stop)
	return s
}

// FreeAddr returns a loopback host:port that was free a moment ago, below
// the kernel's ephemeral range: a server a test stops and starts again on
// the same port (etcd restarted) would otherwise find it taken by some
// client's outgoing connection, which the kernel gives ephemeral ports.
func FreeAddr(t testing.TB) string {
	t.Helper()
	low := ephemeralLow()
	for range 200 {
		port := 10000 + rand.IntN(max(low-10000, 1))
		l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port))
		if err == nil {
			l.Close()
			return l.Addr().String()
		}
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("free port: %v", err)
	}
	defer l.Close()
	return l.Addr().String()
}

// ephemeralLow is the first port of the kernel's ephemeral range (Linux'
// default when unknown).
func ephemeralLow() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if n, err := strconv.Atoi(f[0]); err == nil && n > 10100 {
				return n
			}
		}
	}
	return 32768
}

func (s *Server) start() {
	s.t.Helper()
	srv, err := embedetcd.Start(embedetcd.Config{
		Dir:           filepath.Join(s.root, fmt.Sprintf("data-%d", s.epoch)),
		ClientAddr:    s.clientAddr,
		PeerAddr:      s.peerAddr,
		ClusterToken:  fmt.Sprintf("etcdtest-%d", s.epoch),
		UnsafeNoFsync: true,
	})
	if err != nil {
		s.t.Fatalf("etcdtest: %v", err)
	}
	s.srv = srv
}

// Endpoint is the client host:port.
func (s *Server) Endpoint() string { return s.clientAddr }

// Client returns a new client for this member, closed when the test ends.
func (s *Server) Client(t testing.TB) *clientv3.Client {
	t.Helper()
	c, err := etcdclient.New([]string{s.clientAddr}, clientv3.Config{})
	if err != nil {
		t.Fatalf("etcdtest client: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// Stop stops the member; its data stays for Restart. Stopping twice is fine.
func (s *Server) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.srv != nil {
		s.srv.Close()
		s.srv = nil
	}
}

// Restart starts the member again on the same ports and data directory.
func (s *Server) Restart() {
	s.t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.srv != nil {
		s.srv.Close()
	}
	s.start()
}

// Wipe replaces the member by a new cluster on the same ports, with no keys
// and no leases: what clients see when etcd is rebuilt from scratch.
func (s *Server) Wipe() {
	s.t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.srv != nil {
		s.srv.Close()
	}
	s.epoch++
	s.start()
}

// KeepAlivesReceived is embedetcd.KeepAlivesReceived, failing the test on
// error.
func KeepAlivesReceived(tb testing.TB) float64 {
	tb.Helper()
	n, err := embedetcd.KeepAlivesReceived()
	if err != nil {
		tb.Fatal(err)
	}
	return n
}
