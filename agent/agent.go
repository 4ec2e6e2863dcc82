package agent

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/workersd/workersd/internal/backoff"
	"github.com/workersd/workersd/internal/lockfile"
	"github.com/workersd/workersd/registrar"
)

// Defaults for the zero values of Config.
const (
	DefaultPollInterval = 100 * time.Millisecond
	DefaultRegisterWait = 500 * time.Millisecond
	// MaxBodySize bounds one API request: a registration is a few hundred
	// bytes.
	MaxBodySize = 64 << 10
	// DefaultMaxPerUser bounds the live registrations of one user: far
	// above any pre-fork server's worker count, it stops one user from
	// filling etcd.
	DefaultMaxPerUser = 1024
)

// releaseBackoff paces the retries of a release on the shared lease.
var releaseBackoff = backoff.Policy{Base: 100 * time.Millisecond, Max: 5 * time.Second}

// errNotWorker is why a live process cannot be a worker.
type errNotWorker string

func (e errNotWorker) Error() string { return string(e) }

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
	// MaxPerUser bounds the live registrations of one user. Optional,
	// defaults to DefaultMaxPerUser.
	MaxPerUser int
	// AllowAddresses are networks a request may register addresses in
	// besides this host's own addresses and loopback (NAT, a sidecar's
	// address). Optional, defaults to none: a worker serves its metrics
	// on this host, and an address elsewhere would make Prometheus fetch
	// whatever a local user names.
	AllowAddresses []netip.Prefix
	// Registerer receives the agent's and the registrars' metrics; nil
	// means none.
	Registerer prometheus.Registerer
	// Logger; nil discards.
	Logger hclog.Logger
}

// Agent registers worker processes and revokes their registrations when
// they exit.
type Agent struct {
	cfg Config
	log hclog.Logger
	m   *metrics

	ctx    context.Context // lives from Start to Close; parent of every registration
	cancel context.CancelFunc
	wg     sync.WaitGroup // watchers, the state syncer, revokes of dead leases

	opMu sync.Mutex // serializes Register and API deregistration

	mu      sync.Mutex
	started bool
	closed  bool
	byID    map[string]*entry
	byPID   map[int]*entry

	saveMu      sync.Mutex
	releaseLock func() // the state file's lock, from Start to Close

	// Unless Config.LeasePerWorker: the leases of every key and every hold.
	lease, holdLease *registrar.SharedLease
}

// entry is one registered process.
type entry struct {
	id         string
	pid        int
	uid        int // the process's owner: who may change or remove it
	startTicks uint64
	job        string
	value      registrar.Value
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
	if cfg.MaxPerUser <= 0 {
		cfg.MaxPerUser = DefaultMaxPerUser
	}
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	return &Agent{
		cfg:   cfg,
		log:   cfg.Logger,
		m:     m,
		byID:  map[string]*entry{},
		byPID: map[int]*entry{},
	}, nil
}

// Start restores the registrations of the state file whose processes are
// still alive, adopting their keys and leases, revokes those of processes
// that died meanwhile, and starts keeping the state file up to date. ctx
// carries values only (docs/DEVELOPING.md): the agent lives until Close.
func (a *Agent) Start(ctx context.Context) error {
	a.mu.Lock()
	if a.started {
		a.mu.Unlock()
		return errors.New("agent: already started")
	}
	a.started = true
	a.ctx, a.cancel = context.WithCancel(context.WithoutCancel(ctx))
	a.mu.Unlock()

	if a.cfg.StateFile != "" {
		// Two agents on one state file would each revoke what the other
		// registered.
		release, err := lockfile.Acquire(a.cfg.StateFile + ".lock")
		if err != nil {
			a.mu.Lock()
			a.closed = true // a failed start serves nothing
			a.mu.Unlock()
			a.cancel()
			return fmt.Errorf("agent: state file: %w (another agent?)", err)
		}
		a.releaseLock = release
		st, err := readState(a.cfg.StateFile)
		if err != nil {
			st = a.recoverState(err)
		}
		a.startSharedLeases(st.SharedLease, st.SharedHoldLease)
		for _, se := range st.Workers {
			a.restore(se)
		}
		a.sweep()
		a.persist()
		return nil
	}
	a.startSharedLeases(0, 0)
	return nil
}

// startSharedLeases starts keeping the shared leases alive (with
// unless Config.LeasePerWorker), resuming those of an earlier agent process.
func (a *Agent) startSharedLeases(lease, hold clientv3.LeaseID) {
	if a.cfg.LeasePerWorker {
		return
	}
	a.lease = registrar.NewSharedLease(a.cfg.Client, a.cfg.TTL, lease, a.log.Named("lease"))
	a.wg.Go(func() { a.lease.Run(a.ctx) })
	if a.slotHold() > 0 {
		a.holdLease = registrar.NewSharedLease(a.cfg.Client, registrar.HoldWindow(a.cfg.TTL, a.slotHold()), hold, a.log.Named("hold_lease"))
		a.wg.Go(func() { a.holdLease.Run(a.ctx) })
	}
}

// slotHold is the registrations' SlotHold, 0 when holds are off.
func (a *Agent) slotHold() time.Duration {
	switch {
	case a.cfg.SlotHold < 0:
		return 0
	case a.cfg.SlotHold == 0:
		return registrar.DefaultSlotHold
	}
	return a.cfg.SlotHold
}

// sweep releases the keys and holds on the resumed shared leases that no
// adopted registration owns: those of workers whose removal an earlier
// agent process could not finish. Left alone they would live as long as
// the shared lease, that is for ever.
func (a *Agent) sweep() {
	if a.lease == nil || a.lease.ID() == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(a.ctx, a.cfg.TTL)
	defer cancel()
	lease, hold := a.lease.ID(), clientv3.LeaseID(0)
	if a.holdLease != nil {
		hold = a.holdLease.ID()
	}
	// Start calls this before the API serves: no registration can come
	// meanwhile. A restored one may claim a new slot concurrently, hence
	// its registrar's key as well as the recorded one.
	a.mu.Lock()
	owned := map[string]bool{}
	for _, e := range a.byID {
		owned[e.key] = true
		owned[e.reg.State().Key] = true
	}
	a.mu.Unlock()
	for _, p := range []string{a.cfg.Prefix, registrar.HoldPrefix(a.cfg.Prefix)} {
		resp, err := a.cfg.Client.Get(ctx, p, clientv3.WithPrefix(), clientv3.WithKeysOnly())
		if err != nil {
			a.log.Warn("cannot look for registrations left on the shared lease", "error", err)
			return
		}
		for _, kv := range resp.Kvs {
			k, err := registrar.ParseKey(p, string(kv.Key))
			if err != nil {
				continue // not a slot's key: nothing a registrar wrote
			}
			if p != a.cfg.Prefix {
				if hold == 0 || clientv3.LeaseID(kv.Lease) != hold {
					continue
				}
				k.Prefix = a.cfg.Prefix // the registration of this hold
			} else if clientv3.LeaseID(kv.Lease) != lease {
				continue
			}
			key := k.String()
			if owned[key] {
				continue
			}
			owned[key] = true // once for a key and its hold
			a.log.Info("releasing a registration left on the shared lease", "key", key)
			a.releaseLater(key, lease, hold)
		}
	}
}

// restore adopts one registration of an earlier agent process.
func (a *Agent) restore(se stateEntry) {
	log := a.log.With("pid", se.PID, "job", se.Job, "key", se.Key)
	a.mu.Lock()
	_, dup := a.byPID[se.PID]
	a.mu.Unlock()
	if dup || !alive(se.PID, se.StartTicks) {
		log.Info("worker exited while the agent was down; revoking its lease")
		a.m.deregistrations.WithLabelValues("exited").Inc()
		a.dropLater(se.Key, se.Lease, se.HoldLease)
		return
	}
	uid, err := processOwner(se.PID)
	if err != nil {
		log.Info("not adopting the registration: its process is gone or cannot be a worker; revoking its lease", "error", err)
		a.m.deregistrations.WithLabelValues("exited").Inc()
		a.dropLater(se.Key, se.Lease, se.HoldLease)
		return
	}
	proc, err := openProc(se.PID, se.StartTicks, a.cfg.PollInterval, !a.cfg.DisablePidfd)
	if err != nil {
		log.Info("worker exited while the agent was down; revoking its lease", "error", err)
		a.m.deregistrations.WithLabelValues("exited").Inc()
		a.dropLater(se.Key, se.Lease, se.HoldLease)
		return
	}
	resume := registrar.Resume{Key: se.Key, Lease: se.Lease, HoldLease: se.HoldLease}
	reg, err := a.newRegistrar(se.Job, se.Value, resume)
	if err != nil && se.Key != "" {
		// Another host name or prefix than before: the old key cannot be
		// adopted, so it must not outlive its lease next to a new one.
		log.Warn("cannot adopt the previous registration; registering anew", "error", err)
		a.dropLater(se.Key, se.Lease, se.HoldLease)
		se.Key, se.Lease, se.HoldLease = "", 0, 0
		reg, err = a.newRegistrar(se.Job, se.Value, registrar.Resume{})
	}
	if err != nil {
		log.Error("dropping an invalid entry of the state file", "error", err)
		proc.close()
		a.dropLater(se.Key, se.Lease, se.HoldLease)
		return
	}
	e := &entry{
		id: se.ID, pid: se.PID, uid: uid, startTicks: se.StartTicks, job: se.Job, value: se.Value,
		reg: reg, proc: proc, key: se.Key, lease: se.Lease, holdLease: se.HoldLease,
	}
	a.mu.Lock()
	a.add(e)
	a.mu.Unlock()
	a.m.restored.Inc()
	log.Info("adopted the registration of a live worker", "watch", e.watchMethod())
}

// dropLater ends the registration of a process that is gone, without
// holding up the start when etcd is down: a lease of its own is revoked
// (or expires), a key on the shared lease is released (ReleaseShared).
func (a *Agent) dropLater(key string, lease, hold clientv3.LeaseID) {
	if a.lease != nil {
		if key != "" {
			a.releaseLater(key, lease, hold)
		}
		return
	}
	if lease == 0 {
		return
	}
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		ctx, cancel := context.WithTimeout(a.ctx, a.cfg.TTL)
		defer cancel()
		if _, err := a.cfg.Client.Revoke(ctx, lease); err != nil {
			a.log.Debug("revoke of a dead worker's lease failed; it expires on its own", "lease", fmt.Sprintf("%x", int64(lease)), "error", err)
		}
	}()
}

// releaseLater releases a key on a shared lease in the background, trying
// until it succeeds or the agent closes: unlike a lease of its own, a key
// on the shared lease does not expire while the agent lives.
func (a *Agent) releaseLater(key string, lease, hold clientv3.LeaseID) {
	a.wg.Go(func() {
		for failures := 0; ; failures++ {
			ctx, cancel := context.WithTimeout(a.ctx, a.cfg.TTL)
			err := registrar.ReleaseShared(ctx, a.cfg.Client, a.cfg.Prefix, key, lease, hold, a.cfg.TTL, a.slotHold())
			cancel()
			if err == nil || a.ctx.Err() != nil {
				return
			}
			a.log.Warn("cannot release a registration on the shared lease; retrying", "key", key, "error", err)
			select {
			case <-time.After(releaseBackoff.Delay(failures)):
			case <-a.ctx.Done():
				return
			}
		}
	})
}

func (a *Agent) newRegistrar(job string, v registrar.Value, resume registrar.Resume) (*registrar.Registrar, error) {
	return registrar.New(registrar.Config{
		Client:     a.cfg.Client,
		Prefix:     a.cfg.Prefix,
		Job:        job,
		Host:       a.cfg.Host,
		Value:      v,
		TTL:        a.cfg.TTL,
		SlotHold:   a.cfg.SlotHold,
		Registerer: a.cfg.Registerer,
		Logger:     a.log.Named("registrar").With("pid", v.PID),
		Resume:     resume,
		Lease:      a.lease,
		HoldLease:  a.holdLease,
	})
}

// add starts the registration and the watcher of e. a.mu is held.
func (a *Agent) add(e *entry) {
	ctx, cancel := context.WithCancel(a.ctx)
	e.cancel = cancel
	a.byID[e.id] = e
	a.byPID[e.pid] = e
	a.m.workers.Set(float64(len(a.byID)))
	e.reg.Register(ctx)
	a.wg.Add(2)
	go a.watch(ctx, e)
	go a.followLease(ctx, e)
}

// followLease persists e's key and lease whenever its registrar claims anew
// (after etcd lost the lease, say), so a restarted agent adopts the live one.
func (a *Agent) followLease(ctx context.Context, e *entry) {
	defer a.wg.Done()
	for {
		changed := e.reg.Changed() // before reading, so no change is missed
		a.recordLease(e)
		select {
		case <-changed:
		case <-ctx.Done():
			return
		}
	}
}

// remove revokes e's registration. It reports false if e was removed
// already (the API and the watcher may race).
func (a *Agent) remove(ctx context.Context, e *entry, reason string) bool {
	if !a.take(e, reason) {
		return false
	}
	a.revoke(ctx, e)
	return true
}

// take forgets e, so nothing else revokes or persists it; false if it was
// taken already. Cheap: callers holding opMu take, then revoke without it.
func (a *Agent) take(e *entry, reason string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.byID[e.id] != e {
		return false
	}
	delete(a.byID, e.id)
	delete(a.byPID, e.pid)
	a.m.workers.Set(float64(len(a.byID)))
	a.m.deregistrations.WithLabelValues(reason).Inc()
	return true
}

// revoke deregisters a taken entry; it may wait for etcd up to the TTL.
// The caller's cancellation must not cut it short (a worker that sends
// DELETE and exits at once still wants its target gone), so ctx is only
// used for its values.
func (a *Agent) revoke(ctx context.Context, e *entry) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), a.cfg.TTL)
	defer cancel()
	if err := e.reg.Deregister(ctx); err != nil {
		if a.lease != nil {
			a.log.Warn("removal failed; retrying in the background", "pid", e.pid, "error", err)
			st := e.reg.State()
			a.releaseLater(st.Key, st.LeaseID, st.HoldLeaseID)
		} else {
			a.log.Warn("revoke failed; the registration expires with its lease", "pid", e.pid, "error", err)
		}
	}
	e.cancel()
	// After the revoke, so removal from etcd is not delayed by a disk
	// write; a crash in between only leaves an entry whose process is
	// dead, which the next start drops.
	a.persist()
}

// Register registers a worker process. It reports whether a registration
// was created; registering the same process again with the same request
// returns the existing one. Errors are *Error.
func (a *Agent) Register(ctx context.Context, req Request) (Worker, bool, error) {
	e, created, err := a.register(ctx, req)
	if err != nil {
		return Worker{}, false, err
	}
	if !created {
		return a.view(e), false, nil
	}
	// Answer with the key when etcd is quick, "pending" when it is not: a
	// worker must start even when etcd is down.
	if a.cfg.RegisterWait > 0 {
		wctx, cancel := context.WithTimeout(ctx, a.cfg.RegisterWait)
		err := e.reg.WaitRegistered(wctx)
		cancel()
		if err == nil {
			a.recordLease(e)
		}
	}
	return a.view(e), true, nil
}

func (a *Agent) register(ctx context.Context, req Request) (*entry, bool, error) {
	v, err := a.value(req)
	if err != nil {
		return nil, false, err
	}
	ticks, err := processStartTicks(req.PID)
	if errors.Is(err, errNotAlive) {
		return nil, false, apiErr(http.StatusUnprocessableEntity, "pid", "pid %d is not a running process", req.PID)
	}
	if err != nil {
		return nil, false, apiErr(http.StatusInternalServerError, "pid", "%v", err)
	}
	uid, err := processOwner(req.PID)
	var notWorker errNotWorker
	switch {
	case errors.As(err, &notWorker):
		return nil, false, apiErr(http.StatusUnprocessableEntity, "pid", "pid %d cannot be a worker: %v", req.PID, err)
	case errors.Is(err, errNotAlive):
		return nil, false, apiErr(http.StatusUnprocessableEntity, "pid", "pid %d is not a running process", req.PID)
	case err != nil:
		return nil, false, apiErr(http.StatusInternalServerError, "pid", "%v", err)
	}
	caller := callerFrom(ctx)
	if !caller.mayActFor(uid) {
		a.m.refusals.WithLabelValues("foreign_process").Inc()
		return nil, false, apiErr(http.StatusForbidden, "pid", "pid %d belongs to uid %d; %s may register only its own processes", req.PID, uid, caller)
	}
	if v.StartedAt, err = processStartTime(ticks); err != nil {
		return nil, false, apiErr(http.StatusInternalServerError, "", "%v", err)
	}

	a.opMu.Lock()
	defer a.opMu.Unlock()
	a.mu.Lock()
	if !a.started || a.closed {
		a.mu.Unlock()
		return nil, false, apiErr(http.StatusServiceUnavailable, "", "the agent is not running")
	}
	old := a.byPID[req.PID]
	owned, sameAddr := 0, (*entry)(nil)
	for _, e := range a.byID {
		if e.uid == uid {
			owned++
		}
		if e.pid != req.PID && e.value.Address == v.Address {
			sameAddr = e
		}
	}
	a.mu.Unlock()
	if sameAddr != nil {
		a.m.refusals.WithLabelValues("address_taken").Inc()
		return nil, false, apiErr(http.StatusConflict, "address", "%s is already registered by pid %d (job %q)", v.Address, sameAddr.pid, sameAddr.job)
	}
	if old == nil && owned >= a.cfg.MaxPerUser {
		a.m.refusals.WithLabelValues("user_limit").Inc()
		return nil, false, apiErr(http.StatusTooManyRequests, "pid", "uid %d has %d live registrations, at most %d", uid, owned, a.cfg.MaxPerUser)
	}
	if old != nil {
		if old.startTicks == ticks {
			if old.job == req.Job && sameValue(old.value, v) {
				return old, false, nil
			}
			return nil, false, apiErr(http.StatusConflict, "pid",
				"pid %d is already registered (job %q, address %s); DELETE /v1/workers/%d first", req.PID, old.job, old.value.Address, req.PID)
		}
		// The pid was reused before the watcher noticed the old exit.
		// Revoke in the background: opMu must not wait for etcd.
		if a.take(old, "exited") {
			a.wg.Add(1)
			go func() {
				defer a.wg.Done()
				a.revoke(ctx, old)
			}()
		}
	}

	proc, err := openProc(req.PID, ticks, a.cfg.PollInterval, !a.cfg.DisablePidfd)
	if errors.Is(err, errNotAlive) {
		return nil, false, apiErr(http.StatusUnprocessableEntity, "pid", "pid %d is not a running process", req.PID)
	}
	if err != nil {
		return nil, false, apiErr(http.StatusInternalServerError, "pid", "watch pid %d: %v", req.PID, err)
	}
	reg, err := a.newRegistrar(req.Job, v, registrar.Resume{})
	if err != nil {
		proc.close()
		return nil, false, fromFieldErr(err)
	}
	e := &entry{
		id:  strconv.Itoa(req.PID) + "-" + strconv.FormatUint(ticks, 10),
		pid: req.PID, uid: uid, startTicks: ticks, job: req.Job, value: v, reg: reg, proc: proc,
	}
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		proc.close()
		return nil, false, apiErr(http.StatusServiceUnavailable, "", "the agent is stopping")
	}
	a.add(e)
	a.mu.Unlock()
	a.m.registrations.Inc()
	a.persist()
	a.log.Info("worker registered", "pid", e.pid, "job", e.job, "address", v.Address, "watch", e.watchMethod())
	return e, true, nil
}

// Deregister revokes the registration of a process given by pid or ID.
// Errors are *Error.
func (a *Agent) Deregister(ctx context.Context, idOrPID string) (Worker, error) {
	a.opMu.Lock()
	e := a.lookup(idOrPID)
	if e == nil {
		a.opMu.Unlock()
		return Worker{}, apiErr(http.StatusNotFound, "pid", "no worker %q is registered", idOrPID)
	}
	if caller := callerFrom(ctx); !caller.mayActFor(e.uid) {
		a.opMu.Unlock()
		a.m.refusals.WithLabelValues("foreign_process").Inc()
		return Worker{}, apiErr(http.StatusForbidden, "pid", "pid %d belongs to uid %d; %s may remove only its own processes", e.pid, e.uid, caller)
	}
	if !a.take(e, "api") {
		a.opMu.Unlock()
		return Worker{}, apiErr(http.StatusNotFound, "pid", "no worker %q is registered", idOrPID)
	}
	w := a.view(e)
	a.opMu.Unlock()
	// Outside opMu: with etcd down the revoke may take a TTL, and other
	// registrations must not wait for it.
	a.revoke(ctx, e)
	a.log.Info("worker deregistered", "pid", e.pid, "job", e.job)
	w.State = "deregistered"
	return w, nil
}

func (a *Agent) lookup(idOrPID string) *entry {
	a.mu.Lock()
	defer a.mu.Unlock()
	if e, ok := a.byID[idOrPID]; ok {
		return e
	}
	pid, err := strconv.Atoi(idOrPID)
	if err != nil || strconv.Itoa(pid) != idOrPID {
		return nil
	}
	return a.byPID[pid]
}

// Get returns one registration by pid or ID.
func (a *Agent) Get(idOrPID string) (Worker, bool) {
	e := a.lookup(idOrPID)
	if e == nil {
		return Worker{}, false
	}
	return a.view(e), true
}

// List returns every registration, by pid.
func (a *Agent) List() []Worker {
	a.mu.Lock()
	es := slices.Collect(maps.Values(a.byID))
	a.mu.Unlock()
	slices.SortFunc(es, func(x, y *entry) int { return x.pid - y.pid })
	ws := make([]Worker, 0, len(es))
	for _, e := range es {
		ws = append(ws, a.view(e))
	}
	return ws
}

func (a *Agent) view(e *entry) Worker {
	st := e.reg.State()
	w := Worker{
		ID: e.id, PID: e.pid, Job: e.job,
		Address: e.value.Address, Scheme: e.value.Scheme, MetricsPath: e.value.MetricsPath,
		Labels: e.value.Labels, StartedAt: e.value.StartedAt,
		State: "pending", Key: st.Key, Slot: st.Slot, Watch: e.watchMethod(),
	}
	if st.Registered {
		w.State = "registered"
	}
	if st.LeaseID != 0 {
		w.Lease = fmt.Sprintf("%x", int64(st.LeaseID))
	}
	if st.LastError != nil {
		w.Error = st.LastError.Error()
	}
	return w
}

// Close stops watching and keeping registrations alive, WITHOUT revoking
// them: an agent restart within the TTL is invisible to Prometheus, since
// the next agent adopts the leases; after a longer stop they expire. Only a
// process exit or an API deregistration revokes.
func (a *Agent) Close() {
	// Under opMu: a registration in progress (which may start a background
	// revoke, counted in wg) finishes before wg is waited for, and every
	// later one sees closed.
	a.opMu.Lock()
	a.mu.Lock()
	if !a.started || a.closed {
		a.closed = true
		a.mu.Unlock()
		a.opMu.Unlock()
		return
	}
	a.closed = true
	a.mu.Unlock()
	a.opMu.Unlock()
	a.cancel()
	a.mu.Lock()
	es := slices.Collect(maps.Values(a.byID))
	a.mu.Unlock()
	for _, e := range es {
		_ = e.reg.Detach(context.Background()) // waits for its loop; never revokes
	}
	a.wg.Wait()
	// Record the last leases once no loop can claim again, so the next
	// agent adopts exactly these.
	for _, e := range es {
		a.recordLease(e)
	}
	if a.releaseLock != nil {
		a.releaseLock()
	}
}
