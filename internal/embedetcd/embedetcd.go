// Package embedetcd starts an etcd member inside the current process.
//
// It exists so that one host needs nothing but sdwriter: with no etcd
// endpoints configured, sdwriter serves an embedded single-member etcd on
// 127.0.0.1:2379, where workers look by default. The same code backs the test
// helper (internal/etcdtest) and the integration suite's cluster members, so
// the etcd that tests exercise is the one users run.
package embedetcd

import (
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"

	"github.com/workersd/workersd/internal/lockfile"
)

// Config describes one member. Addresses are host:port; loopback in tests.
type Config struct {
	Name       string // member name; "default" when empty
	Dir        string // data directory, created when missing
	ClientAddr string // host:port for clients
	PeerAddr   string // host:port for peers
	// InitialCluster is "name=http://host:port,..." for a multi-member
	// cluster; empty means a single member of its own.
	InitialCluster string
	// ClusterToken distinguishes clusters built on the same addresses, so a
	// wiped member never talks to an old one.
	ClusterToken string
	// Logger receives etcd's own logs; nil discards them.
	Logger *zap.Logger
	// StartTimeout bounds waiting for the member to serve; default 60 s.
	StartTimeout time.Duration
	// UnsafeNoFsync trades durability for speed; for tests only.
	UnsafeNoFsync bool
}

// Server is a running member.
type Server struct {
	etcd    *embed.Etcd
	cfg     Config
	release func() // the data dir lock
}

// Start launches the member and waits until it serves clients.
func Start(c Config) (*Server, error) {
	if c.Name == "" {
		c.Name = "default"
	}
	if c.StartTimeout <= 0 {
		c.StartTimeout = 60 * time.Second
	}
	if c.ClusterToken == "" {
		c.ClusterToken = "workersd"
	}
	curl, err := url.Parse("http://" + c.ClientAddr)
	if err != nil {
		return nil, fmt.Errorf("client address %q: %w", c.ClientAddr, err)
	}
	purl, err := url.Parse("http://" + c.PeerAddr)
	if err != nil {
		return nil, fmt.Errorf("peer address %q: %w", c.PeerAddr, err)
	}
	cfg := embed.NewConfig()
	cfg.Name = c.Name
	cfg.Dir = c.Dir
	cfg.ListenClientUrls = []url.URL{*curl}
	cfg.AdvertiseClientUrls = []url.URL{*curl}
	cfg.ListenPeerUrls = []url.URL{*purl}
	cfg.AdvertisePeerUrls = []url.URL{*purl}
	cfg.InitialClusterToken = c.ClusterToken
	if c.InitialCluster != "" {
		cfg.InitialCluster = c.InitialCluster
	} else {
		cfg.InitialCluster = cfg.InitialClusterFromName(c.Name)
	}
	cfg.UnsafeNoFsync = c.UnsafeNoFsync
	lg := c.Logger
	if lg == nil {
		lg = zap.NewNop()
	}
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(lg)
	// Workers rely on the server's lease clock; a snapshot every 10k
	// transactions keeps restarts quick without extra disk churn.
	cfg.SnapshotCount = 10000

	if err := os.MkdirAll(c.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("embedded etcd %s: data dir: %w", c.Name, err)
	}
	// etcd would wait for ever on its database's lock held by another
	// process (a second sdwriter on the same data dir), silent and deaf to
	// signals: fail at once instead, naming the directory.
	release, err := lockfile.Acquire(filepath.Join(c.Dir, "workersd.lock"))
	if err != nil {
		return nil, fmt.Errorf("embedded etcd %s: data dir %s: %w (another sdwriter?)", c.Name, c.Dir, err)
	}
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		release()
		return nil, fmt.Errorf("start embedded etcd %s: %w", c.Name, err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		e.Close()
		release()
		return nil, fmt.Errorf("embedded etcd %s: %w", c.Name, err)
	case <-time.After(c.StartTimeout):
		e.Server.Stop()
		e.Close()
		release()
		return nil, fmt.Errorf("embedded etcd %s: not ready after %s", c.Name, c.StartTimeout)
	}
	return &Server{etcd: e, cfg: c, release: release}, nil
}

// Endpoint is the client endpoint, host:port.
func (s *Server) Endpoint() string { return s.cfg.ClientAddr }

// Err reports a fatal server error.
func (s *Server) Err() <-chan error { return s.etcd.Err() }

// Close stops the member and releases its ports and data directory.
func (s *Server) Close() {
	s.etcd.Close()
	s.release()
}
