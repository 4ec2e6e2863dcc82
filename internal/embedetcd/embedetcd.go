// Package embedetcd starts an etcd member inside the current process.
//
// It exists so that one host needs nothing but sdwriter: with no etcd
// endpoints configured, sdwriter serves an embedded single-member etcd on
// 127.0.0.1:2379, where workers look by default. The same code backs the test
// helper (internal/testing/etcdtest) and the integration suite's cluster members, so
// the etcd that tests exercise is the one users run.
//
// A member stays bounded for months unattended (see maintain.go): etcd
// compacts its history itself (periodic retention, CompactionRetention),
// the member defragments its database when the file is mostly free space,
// and the database has a quota (QuotaBackendBytes). etcd's own warnings and
// errors reach Log.
package embedetcd

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"go.etcd.io/etcd/server/v3/embed"
	"go.etcd.io/etcd/server/v3/etcdserver/api/v3compactor"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/workersd/workersd/internal/hclogzap"
	"github.com/workersd/workersd/internal/lockfile"
)

// DefaultCompactionRetention is how much history etcd keeps by default.
//
// etcd's periodic mode (v3compactor.Periodic) records the revision every
// tenth of the retention and, once a retention has passed since its last
// compaction, compacts to the revision of one retention ago: the history
// held is between one and two retentions, whatever the write rate, and a
// watcher away for less than a retention resumes where it was. Its revision
// mode checks every 5 minutes whatever the retention, and keeps a number of
// revisions whatever time they span: at a high write rate that is seconds
// of history, and a watcher that reconnects finds its revision compacted
// and lists everything again. Ten minutes holds, at one worker restart a
// second, 600 to 1,200 restarts of history: about 0.3 to 0.6 MB
// (docs/SCALING.md).
const DefaultCompactionRetention = 10 * time.Minute

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
	// Log receives etcd's warnings and errors (through internal/hclogzap)
	// and this package's own lines (defragmentation, alarms disarmed); nil
	// discards them.
	Log hclog.Logger
	// Logger receives all of etcd's own logs, info included, besides Log;
	// nil: none.
	Logger *zap.Logger
	// CompactionRetention is the history etcd keeps, in its periodic mode
	// (DefaultCompactionRetention says why): 0 means
	// DefaultCompactionRetention, a negative value never compacts.
	CompactionRetention time.Duration
	// QuotaBackendBytes is the database's quota: at it, etcd raises the
	// NOSPACE alarm and refuses every write but deletions until the
	// alarm is disarmed. 0 means etcd's default, 2 GiB.
	QuotaBackendBytes int64
	// Maintenance decides when the member defragments (maintain.go); the
	// zero value is the default policy.
	Maintenance Maintenance
	// Metrics receive the member's upkeep counts (metrics.go). Optional,
	// defaults to metrics registered nowhere.
	Metrics *Metrics
	// StartTimeout bounds waiting for the member to serve; default 60 s.
	StartTimeout time.Duration
	// UnsafeNoFsync trades durability for speed; for tests only.
	UnsafeNoFsync bool
}

// quiet drops the warnings etcd gives at every start of a member as this
// package configures it on purpose, which would otherwise stand in the
// log of every start as if something were wrong: one port for gRPC and
// HTTP (what workers and etcdctl reach), simple tokens (no authentication
// on a loopback member), the default member name; and, once Close has
// begun, the errors of its listeners being closed.
type quiet struct {
	zapcore.Core
	closing *atomic.Bool
}

var expected = map[string]bool{
	"Running http and grpc server on single port. This is not recommended for production.": true,
	"simple token is not cryptographically signed":                                         true,
	"it isn't recommended to use default name, please set a value for --name. Note that etcd might run into issue when multiple members have the same default name": true,
}

func (q quiet) With(fields []zapcore.Field) zapcore.Core {
	return quiet{Core: q.Core.With(fields), closing: q.closing}
}

func (q quiet) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if expected[e.Message] || !q.Core.Enabled(e.Level) {
		return ce
	}
	return ce.AddCore(e, q)
}

func (q quiet) Write(e zapcore.Entry, fields []zapcore.Field) error {
	if q.closing.Load() {
		for _, f := range fields {
			if err, ok := f.Interface.(error); ok && f.Type == zapcore.ErrorType && strings.Contains(err.Error(), "closed") {
				return nil
			}
		}
	}
	return q.Core.Write(e, fields)
}

// Server is a running member.
type Server struct {
	etcd    *embed.Etcd
	cfg     Config
	release func() // the data dir lock
	m       *Metrics
	closing *atomic.Bool // set by Close: quiet drops the listeners' errors

	ctx       context.Context // canceled by Close: ends maintain
	cancel    context.CancelFunc
	wg        sync.WaitGroup
	closeOnce sync.Once

	// maintain's own
	tooLargeLogged   bool
	defragCompactRev int64 // the compacted revision at the last defragmentation
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
	if c.Log == nil {
		c.Log = hclog.NewNullLogger()
	}
	closing := new(atomic.Bool)
	lg := zap.New(quiet{Core: hclogzap.NewCore(c.Log, zapcore.WarnLevel), closing: closing})
	if c.Logger != nil {
		lg = zap.New(zapcore.NewTee(c.Logger.Core(), lg.Core()))
	}
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(lg)
	if c.CompactionRetention == 0 {
		c.CompactionRetention = DefaultCompactionRetention
	}
	if c.CompactionRetention > 0 {
		cfg.AutoCompactionMode = v3compactor.ModePeriodic
		// etcd parses a duration, or a number of hours.
		cfg.AutoCompactionRetention = c.CompactionRetention.String()
	}
	if c.QuotaBackendBytes < 0 {
		return nil, fmt.Errorf("embedded etcd %s: quota %d bytes: want 0 (etcd's default) or more", c.Name, c.QuotaBackendBytes)
	}
	cfg.QuotaBackendBytes = c.QuotaBackendBytes
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
	srv := &Server{etcd: e, cfg: c, release: release, closing: closing}
	srv.ctx, srv.cancel = context.WithCancel(context.Background())
	srv.m = c.Metrics
	if srv.m == nil {
		srv.m = NewMetrics(nil)
	}
	if c.Maintenance.Interval >= 0 {
		srv.wg.Go(srv.maintain)
	}
	return srv, nil
}

// Endpoint is the client endpoint, host:port.
func (s *Server) Endpoint() string { return s.cfg.ClientAddr }

// Err reports a fatal server error.
func (s *Server) Err() <-chan error { return s.etcd.Err() }

// Quota is the database's quota in bytes.
func (s *Server) Quota() int64 {
	if s.cfg.QuotaBackendBytes == 0 {
		return DefaultQuotaBytes
	}
	return s.cfg.QuotaBackendBytes
}

// DefaultQuotaBytes is etcd's default quota (storage.DefaultQuotaBytes).
const DefaultQuotaBytes = 2 << 30

// Close stops the maintenance, then the member, and releases its ports and
// data directory. Closing twice is fine.
func (s *Server) Close() {
	s.closeOnce.Do(func() {
		s.cancel()
		s.wg.Wait()
		s.closing.Store(true)
		s.etcd.Close()
		s.release()
	})
}
