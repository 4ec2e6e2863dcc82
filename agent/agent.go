package agent

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/workersd/workersd/registrar"
)

// Defaults for the zero values of Config.
const (
	DefaultPollInterval = 100 * time.Millisecond
	DefaultRegisterWait = 500 * time.Millisecond
	DefaultRemoveWait   = time.Second
	// DefaultReconcileInterval: a key left on the host lease (a removal
	// that could not know its key) is a phantom target for at most this
	// long.
	DefaultReconcileInterval = time.Minute
	// MaxBodySize bounds one API request: a registration is a few hundred
	// bytes.
	MaxBodySize = 64 << 10
	// DefaultMaxPerUser bounds the live registrations of one user: far
	// above any pre-fork server's worker count, it stops one user from
	// filling etcd.
	DefaultMaxPerUser = 1024
)

// Config configures an Agent. Client and Host are required.
type Config struct {
	// Client is the etcd client every registration uses; the caller closes
	// it after Close.
	Client *clientv3.Client
	// Prefix of the registrations; registrar.DefaultPrefix when empty.
	Prefix string
	// Host names this machine in keys and instance labels.
	Host string
	// TTL of each registration's lease; registrar.DefaultTTL when zero.
	TTL time.Duration
	// SlotHold keeps a worker's slot from being reused for that long after
	// it exits. Optional, defaults to registrar.DefaultSlotHold; see
	// registrar.Config.SlotHold.
	SlotHold time.Duration
	// LeasePerWorker gives every worker's key an etcd lease of its own,
	// kept alive by the agent. By default every key is on one lease of
	// the agent's (and every slot hold on a second), kept alive once for
	// the whole host: etcd then sees two keep-alive streams per host
	// whatever the number of workers (docs/SCALING.md). Either way a
	// worker's exit deletes its key at once and the agent's death expires
	// them all after the TTL; an agent restarted with the other setting
	// moves its workers' keys in place. Optional, defaults to false.
	LeasePerWorker bool
	// AdvertiseHost is the host part of the address registered for a
	// request that gives only a port. Default: the local IP this host uses
	// to reach the client's first endpoint, as package worker does.
	AdvertiseHost string
	// StateFile keeps registrations across restarts of the agent; empty
	// means none are kept.
	StateFile string
	// PollInterval is how often a process is checked when it cannot be
	// watched through a pidfd.
	PollInterval time.Duration
	// DisablePidfd forces polling (kernels before 5.10, tests).
	DisablePidfd bool
	// RegisterWait bounds how long a registration request waits for the
	// key to be in etcd before answering "pending"; negative: not at all.
	RegisterWait time.Duration
	// RemoveWait bounds how long a removal (a worker's exit, a DELETE)
	// waits for etcd before the agent answers "removal_pending" and goes
	// on in the background; a pending removal is in the state file, so a
	// restarted agent finishes it instead of adopting the worker again.
	// Optional, defaults to DefaultRemoveWait.
	RemoveWait time.Duration
	// ReconcileInterval is how often the agent looks for keys and holds on
	// its host lease that no live registration owns, and removes them:
	// the net under every removal, since a key on the host lease lives as
	// long as the agent. The first look is at start. Optional, defaults to
	// DefaultReconcileInterval; negative turns it off. Unused with
	// LeasePerWorker, where every key dies with its own lease.
	ReconcileInterval time.Duration
	// MaxPerUser bounds the live registrations of one user. Optional,
	// defaults to DefaultMaxPerUser.
	MaxPerUser int
	// AllowAddresses are networks a request may register addresses in
	// besides this host's own addresses and loopback (NAT, a sidecar's
	// address). Optional, defaults to none: a worker serves its metrics
	// on this host, and an address elsewhere would make Prometheus fetch
	// whatever a local user names.
	AllowAddresses []netip.Prefix
	// Metrics receive the agent's counts. Optional, defaults to metrics
	// registered nowhere.
	Metrics *Metrics
	// RegistrarMetrics receive the counts of every registration, summed.
	// Optional, defaults to metrics registered nowhere.
	RegistrarMetrics *registrar.Metrics
	// Logger; nil discards.
	Logger hclog.Logger
}

// Agent registers worker processes and revokes their registrations when
// they exit.
type Agent struct {
	cfg Config
	log hclog.Logger
	m   *Metrics

	ctx    context.Context // lives from Start to Close; parent of every registration
	cancel context.CancelFunc
	wg     sync.WaitGroup // watchers, lease followers, removals, the reconciler

	opMu sync.Mutex // serializes Register and API deregistration

	mu      sync.Mutex
	started bool
	closed  bool
	byID    map[string]*entry
	byPID   map[int]*entry
	// removals ended but not yet known gone from etcd, by entry ID;
	// persisted with the workers.
	removals map[string]*removal

	saveMu      sync.Mutex
	releaseLock func() // the state file's lock, from Start to Close

	// leases are what every registration is on; host is the same when
	// shared (unless Config.LeasePerWorker), nil otherwise.
	leases registrar.Leases
	host   *registrar.HostLeases
}

// entry is one registered process.
type entry struct {
	id         string
	pid        int
	uid        int // the process's owner: who may change or remove it
	startTicks uint64
	job        string
	value      registrar.Value
	encoded    []byte // value as registered: tells its keys from orphans
	reg        *registrar.Registrar
	proc       *procHandle
	cancel     context.CancelFunc // ends the watcher and the registration loop

	// key and leases as last persisted; guarded by Agent.mu.
	key       string
	lease     clientv3.LeaseID
	holdLease clientv3.LeaseID
}

// New validates cfg. The agent does nothing until Start.
func New(cfg Config) (*Agent, error) {
	if err := platformSupported(); err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	if cfg.Client == nil {
		return nil, errors.New("agent: an etcd client is required")
	}
	if cfg.Prefix == "" {
		cfg.Prefix = registrar.DefaultPrefix
	}
	if err := registrar.ValidatePrefix(cfg.Prefix); err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	if err := registrar.ValidateName("host", cfg.Host); err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	if cfg.TTL == 0 {
		cfg.TTL = registrar.DefaultTTL
	}
	if err := registrar.ValidateTTL(cfg.TTL); err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	if cfg.PollInterval <= 0 {
		cfg.PollInterval = DefaultPollInterval
	}
	if cfg.RegisterWait == 0 {
		cfg.RegisterWait = DefaultRegisterWait
	}
	if cfg.RemoveWait <= 0 {
		cfg.RemoveWait = DefaultRemoveWait
	}
	if cfg.ReconcileInterval == 0 {
		cfg.ReconcileInterval = DefaultReconcileInterval
	}
	if cfg.MaxPerUser <= 0 {
		cfg.MaxPerUser = DefaultMaxPerUser
	}
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	m := cfg.Metrics
	if m == nil {
		m = NewMetrics(nil)
	}
	if cfg.RegistrarMetrics == nil {
		cfg.RegistrarMetrics = registrar.NewMetrics(nil)
	}
	return &Agent{
		cfg:      cfg,
		log:      cfg.Logger,
		m:        m,
		byID:     map[string]*entry{},
		byPID:    map[int]*entry{},
		removals: map[string]*removal{},
	}, nil
}
