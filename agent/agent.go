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
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/workersd/workersd/internal/backoff"
	"github.com/workersd/workersd/internal/lockfile"
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
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
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
		a.persist()
		a.startReconciler()
		return nil
	}
	a.startSharedLeases(0, 0)
	a.startReconciler()
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
	return registrar.EffectiveSlotHold(a.cfg.SlotHold)
}

// restore adopts one registration of an earlier agent process.
func (a *Agent) restore(se stateEntry) {
	log := a.log.With("pid", se.PID, "job", se.Job, "key", se.Key)
	if se.Removing {
		log.Info("finishing a removal an earlier agent process could not finish")
		a.dropLater(se)
		return
	}
	a.mu.Lock()
	_, dup := a.byPID[se.PID]
	a.mu.Unlock()
	if dup || !alive(se.PID, se.StartTicks) {
		log.Info("worker exited while the agent was down; removing its registration")
		a.m.deregistrations.WithLabelValues("exited").Inc()
		a.dropLater(se)
		return
	}
	uid, err := processOwner(se.PID)
	if err != nil {
		log.Info("not adopting the registration: its process is gone or cannot be a worker; removing it", "error", err)
		a.m.deregistrations.WithLabelValues("exited").Inc()
		a.dropLater(se)
		return
	}
	proc, err := openProc(se.PID, se.StartTicks, a.cfg.PollInterval, !a.cfg.DisablePidfd)
	if err != nil {
		log.Info("worker exited while the agent was down; removing its registration", "error", err)
		a.m.deregistrations.WithLabelValues("exited").Inc()
		a.dropLater(se)
		return
	}
	resume := registrar.Resume{Key: se.Key, Lease: se.Lease, HoldLease: se.HoldLease}
	reg, err := a.newRegistrar(se.Job, se.Value, resume)
	if err != nil && se.Key != "" {
		// Another host name or prefix than before: the old key cannot be
		// adopted, so it must not outlive its lease next to a new one.
		log.Warn("cannot adopt the previous registration; registering anew", "error", err)
		a.dropLater(se)
		se.Key, se.Lease, se.HoldLease = "", 0, 0
		reg, err = a.newRegistrar(se.Job, se.Value, registrar.Resume{})
	}
	if err != nil {
		log.Error("dropping an invalid entry of the state file", "error", err)
		proc.close()
		a.dropLater(se)
		return
	}
	e := &entry{
		id: se.ID, pid: se.PID, uid: uid, startTicks: se.StartTicks, job: se.Job, value: se.Value,
		encoded: reg.Removal().Value, reg: reg, proc: proc, key: se.Key, lease: se.Lease, holdLease: se.HoldLease,
	}
	a.mu.Lock()
	a.add(e)
	a.mu.Unlock()
	a.m.restored.Inc()
	log.Info("adopted the registration of a live worker", "watch", e.watchMethod())
}

// dropLater ends, in the background, a registration of an earlier agent
// process that is not adopted (its process is gone, or its removal was
// pending): a lease of its own is revoked, a key on the shared lease
// released (registrar.ReleaseShared). It stays in the state file until
// done.
func (a *Agent) dropLater(se stateEntry) {
	if se.Lease == 0 || (a.lease != nil && se.Key == "") {
		return // nothing known to remove; the reconciler finds any key left
	}
	se.Removing = true
	var value []byte
	if b, err := se.Value.Encode(); err == nil {
		value = b
	}
	rm := &removal{se: se}
	rm.do = func(ctx context.Context) error {
		if a.lease == nil {
			if _, err := a.cfg.Client.Revoke(ctx, se.Lease); err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) {
				return fmt.Errorf("revoke lease %x of %s: %w", int64(se.Lease), se.Key, err)
			}
			return nil
		}
		res, err := registrar.ReleaseShared(ctx, a.cfg.Client, a.cfg.Prefix,
			registrar.Removal{Key: se.Key, Value: value, Lease: se.Lease, HoldLease: se.HoldLease}, a.cfg.TTL, a.slotHold())
		if err == nil {
			rm.deleted = res.Deleted
			a.noteHoldDropped(res, se.Key)
		}
		return err
	}
	a.mu.Lock()
	a.removals[se.ID] = rm
	a.mu.Unlock()
	a.wg.Go(func() { a.retryRemoval(rm) })
}

// removal is a registration the agent ended that etcd may still hold.
type removal struct {
	se      stateEntry // as persisted, Removing set
	do      func(ctx context.Context) error
	deleted bool // set by do: a key was deleted
}

// retryRemoval tries rm until it succeeds or the agent closes (the state
// file then keeps it for the next agent process), and forgets it once
// done.
func (a *Agent) retryRemoval(rm *removal) {
	for failures := 0; ; failures++ {
		ctx, cancel := context.WithTimeout(a.ctx, a.cfg.TTL)
		err := rm.do(ctx)
		cancel()
		if err == nil {
			a.mu.Lock()
			if a.removals[rm.se.ID] == rm {
				delete(a.removals, rm.se.ID)
			}
			a.mu.Unlock()
			a.persist()
			a.log.Info("pending removal done", "pid", rm.se.PID, "key", rm.se.Key, "deleted", rm.deleted)
			return
		}
		if a.ctx.Err() != nil {
			return
		}
		if failures == 0 || registrar.IsNoSpace(err) {
			a.log.Warn("cannot remove a registration yet; retrying", "pid", rm.se.PID, "key", rm.se.Key, "error", err)
		}
		select {
		case <-time.After(releaseBackoff.Delay(failures)):
		case <-a.ctx.Done():
			return
		}
	}
}

// noteHoldDropped counts and logs a hold deleted with its key for want of
// space in etcd (registrar.Released).
func (a *Agent) noteHoldDropped(res registrar.Released, key string) {
	if res.HoldDropped {
		a.m.holdsDropped.Inc()
		a.log.Warn("etcd is out of space: the slot's hold was deleted with the key; the slot may be reused before its hold would have ended", "key", key)
	}
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

// remove ends e's registration. It reports false if e was removed
// already (the API and the watcher may race).
func (a *Agent) remove(e *entry, reason string) (removed, ok bool) {
	if !a.take(e, reason) {
		return false, false
	}
	return a.revoke(e, false), true
}

// take forgets e as a live registration and records it as a removal, so
// nothing else revokes it and a restarted agent does not adopt it; false
// if it was taken already. Cheap: callers holding opMu take, then revoke
// without it.
func (a *Agent) take(e *entry, reason string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.byID[e.id] != e {
		return false
	}
	delete(a.byID, e.id)
	delete(a.byPID, e.pid)
	rm := &removal{se: e.stateEntry()}
	rm.se.Removing = true
	rm.do = func(ctx context.Context) error {
		if err := e.reg.Deregister(ctx); err != nil {
			return err
		}
		st := e.reg.State()
		rm.deleted = st.Removed != ""
		a.noteHoldDropped(registrar.Released{HoldDropped: st.HoldDropped}, st.Key)
		return nil
	}
	a.removals[e.id] = rm
	a.m.workers.Set(float64(len(a.byID)))
	a.m.deregistrations.WithLabelValues(reason).Inc()
	return true
}

// revoke removes a taken entry's registration from etcd, waiting up to
// RemoveWait; a removal etcd does not confirm by then goes on in the
// background (retryRemoval) and stays in the state file until done. It
// reports whether the removal is done. persistFirst writes the removal
// to the state file before the etcd call: a worker that asked to be
// removed and lives on must not be adopted by an agent restarted in
// between (a dead worker's entry is dropped at the next start anyway).
func (a *Agent) revoke(e *entry, persistFirst bool) bool {
	a.mu.Lock()
	rm := a.removals[e.id]
	a.mu.Unlock()
	if rm == nil {
		return true
	}
	if persistFirst {
		a.persist()
	}
	// Bounded by the agent's life, not the caller's: a worker that sends
	// DELETE and exits at once still wants its target gone.
	ctx, cancel := context.WithTimeout(a.ctx, a.cfg.RemoveWait)
	err := rm.do(ctx)
	cancel()
	e.cancel()
	if err == nil {
		a.mu.Lock()
		delete(a.removals, e.id)
		a.mu.Unlock()
		// After the removal, so it is not delayed by a disk write.
		a.persist()
		return true
	}
	// What the registration last held, an unconfirmed claim's key
	// included, is what the next agent process must remove.
	if last := e.reg.Removal(); last.Lease != 0 {
		a.mu.Lock()
		rm.se.Key, rm.se.Lease, rm.se.HoldLease = last.Key, last.Lease, last.HoldLease
		a.mu.Unlock()
	}
	a.persist()
	if registrar.IsNoSpace(err) {
		a.log.Error("etcd is out of space (NOSPACE alarm); retrying the removal in the background", "pid", e.pid, "error", err)
	} else {
		a.log.Warn("removal not confirmed by etcd yet; retrying in the background", "pid", e.pid, "error", err)
	}
	if a.ctx.Err() == nil {
		a.wg.Go(func() { a.retryRemoval(rm) })
	}
	return false
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
			a.wg.Go(func() { a.revoke(old, false) })
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
		id:  workerID(req.PID, ticks),
		pid: req.PID, uid: uid, startTicks: ticks, job: req.Job, value: v, encoded: reg.Removal().Value, reg: reg, proc: proc,
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

// Deregister removes the registration of a process given by pid or ID.
// The answer's State is "deregistered" when the key is gone from etcd, or
// "removal_pending" when etcd did not confirm within RemoveWait: the agent
// then goes on trying, and a restarted agent finishes the removal instead
// of adopting the worker. Errors are *Error.
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
	// Outside opMu: with etcd down the removal waits RemoveWait, and other
	// registrations must not wait for it.
	if a.revoke(e, true) {
		w.State = "deregistered"
		a.log.Info("worker deregistered", "pid", e.pid, "job", e.job, "removed", removedKey(e))
	} else {
		w.State = "removal_pending"
		a.log.Info("worker deregistered; its removal from etcd is pending", "pid", e.pid, "job", e.job)
	}
	return w, nil
}

// removedKey is the key e's removal deleted, for logs: "none" when etcd
// held no key of e's (it was gone already, or never written).
func removedKey(e *entry) string {
	if k := e.reg.State().Removed; k != "" {
		return k
	}
	return "none"
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
		if registrar.IsNoSpace(st.LastError) {
			w.Error += " (etcd is out of space, NOSPACE alarm: compact and defragment etcd, then disarm the alarm; see docs/RUNBOOK.md)"
		}
	}
	return w
}

// Close stops watching and keeping registrations alive, WITHOUT revoking
// them: an agent restart within the TTL is invisible to Prometheus, since
// the next agent adopts the leases; after a longer stop they expire. Only a
// process exit or an API deregistration removes. Removals still pending
// stay in the state file for the next agent process. ctx bounds the wait
// for the agent's goroutines, whatever etcd does: they all end at once
// when Close cancels them, but for calls to etcd already in flight, which
// end with their own time-outs; an error says the wait was cut short.
func (a *Agent) Close(ctx context.Context) error {
	// Under opMu: a registration in progress (which may start a background
	// revoke, counted in wg) finishes before wg is waited for, and every
	// later one sees closed.
	a.opMu.Lock()
	a.mu.Lock()
	if !a.started || a.closed {
		a.closed = true
		a.mu.Unlock()
		a.opMu.Unlock()
		return nil
	}
	a.closed = true
	a.mu.Unlock()
	a.opMu.Unlock()
	a.cancel()
	a.mu.Lock()
	es := slices.Collect(maps.Values(a.byID))
	a.mu.Unlock()
	var errs []error
	for _, e := range es {
		if err := e.reg.Detach(ctx); err != nil { // waits for its loop; never revokes
			errs = append(errs, err)
		}
	}
	done := make(chan struct{})
	go func() {
		a.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
		errs = append(errs, fmt.Errorf("waiting for the agent's goroutines: %w", ctx.Err()))
	}
	// Record the last leases once no loop can claim again, so the next
	// agent adopts exactly these, and the removals still pending.
	for _, e := range es {
		a.recordLease(e)
	}
	a.persist()
	if a.releaseLock != nil {
		a.releaseLock()
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("agent: close: %w", err)
	}
	return nil
}
