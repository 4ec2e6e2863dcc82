package registrar

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/workersd/workersd/internal/backoff"
)

const (
	// DefaultTTL is the lease TTL: a crashed worker disappears within about
	// this long; keep-alives cost about 3/TTL requests per second per worker.
	DefaultTTL = 10 * time.Second
	// MinTTL is etcd's own floor (1.5 x election timeout, rounded up); a
	// shorter lease is silently extended by the server, so it is refused.
	MinTTL = 2 * time.Second
	// DefaultSlotHold keeps a freed slot from being reused for 30 s: enough
	// for Prometheus to drop the old target and write its staleness markers
	// with a scrape interval up to 15 s (see Config.SlotHold).
	DefaultSlotHold = 30 * time.Second
)

// EffectiveSlotHold is the hold a Config.SlotHold value means:
// DefaultSlotHold for 0 (Go's zero value is "not set"), 0 (no hold) for a
// negative value, else the value. Every part that reads a SlotHold (the
// registrar, the host agent) asks it, so they never disagree on the rule.
func EffectiveSlotHold(d time.Duration) time.Duration {
	switch {
	case d < 0:
		return 0
	case d == 0:
		return DefaultSlotHold
	}
	return d
}

// Config is the identity of one registration and where it goes.
type Config struct {
	// Client is the etcd client; the caller owns it and closes it after
	// Deregister.
	Client *clientv3.Client
	// Prefix is where registrations live; DefaultPrefix when empty.
	Prefix string
	// Job and Host name the worker; the slot is claimed, not configured.
	Job, Host string
	// Value says where Prometheus scrapes the worker. Address is required.
	// A zero StartedAt is set to the time New is called.
	Value Value
	// TTL of the lease; DefaultTTL when zero, at least MinTTL.
	TTL time.Duration
	// SlotHold is how long a slot stays taken after its registration ends,
	// gracefully or by lease expiry, so that the next worker takes another
	// slot meanwhile. Optional, defaults to DefaultSlotHold; negative turns
	// holds off (a freed slot is reused at once): see EffectiveSlotHold.
	//
	// Why: a reused slot means the next lifetime writes the same series.
	// Prometheus (3.x, created-timestamp-zero-ingestion) sees the restart
	// through the new counters' zero sample at their created timestamp,
	// but drops it when the old target's last samples or staleness
	// markers are newer, which they are while Prometheus still scrapes
	// the old address: until the discovery change reaches its scrape
	// manager (up to about 10 s) plus one scrape interval. Set it to at
	// least the scrape interval plus 15 s.
	//
	// The hold is a key (Key.HoldKey) on a lease of its own, kept alive
	// with the registration's and left to expire after it; its TTL is 1.5
	// times TTL+SlotHold, so the slot stays held for at least SlotHold
	// after the registration's key is gone, however it went. Slots used
	// per (job, host) are bounded by the peak number of concurrent workers
	// plus the registrations that ended within any 1.5 x (TTL+SlotHold).
	SlotHold time.Duration
	// Leases are where the key and the slot's hold live. Optional,
	// defaults to leases of the registration's own (OwnLeases); a host
	// agent shares HostLeases among its workers. Their Prefix, TTL and
	// SlotHold must be this Config's.
	Leases Leases
	// Metrics receive the registration's counts; registrations given the
	// same Metrics add up in them. Optional, defaults to metrics registered
	// nowhere.
	Metrics *Metrics
	// Logger; nil discards.
	Logger hclog.Logger
	// Resume adopts a registration made earlier by another process (a host
	// agent that restarted): if Key still holds the same value on Lease, it
	// is kept instead of claiming a second slot; otherwise Lease is revoked
	// and Key's slot is tried first. Value, StartedAt included, must be the
	// one registered then.
	Resume Resume
}

// Resume names a registration to adopt; see Config.Resume. HoldLease, when
// known, is the lease of the slot's hold, adopted with it. A lease of
// another kind than Config.Leases (an agent restarted with the other
// setting) is adopted by moving the key onto the new one, in its slot.
type Resume struct {
	Key       string
	Lease     clientv3.LeaseID
	HoldLease clientv3.LeaseID
}

// State is what the caller can read about a registration.
type State struct {
	// Registered is true while the key is in etcd on a live lease, as far as
	// the registrar knows.
	Registered bool
	// Key and Slot of the current (or last) claim; Slot is -1 before any.
	Key     string
	Slot    int
	LeaseID clientv3.LeaseID
	// HoldLeaseID is the lease of the slot's hold (Config.SlotHold); 0
	// when holds are off or none is granted yet.
	HoldLeaseID clientv3.LeaseID
	// LastError is why the last attempt or registration failed; nil when
	// registered without incident.
	LastError error
	// Registrations counts the keys claimed, the first included; a key
	// kept (or adopted with Resume) across a loss does not count.
	Registrations int
	// Removed is the key Deregister deleted; empty when it found none
	// holding this registration (already gone) or has not run.
	Removed string
	// HoldDropped: Deregister deleted the slot's hold with the key, etcd
	// being out of space (Released.HoldDropped).
	HoldDropped bool
}

// Registrar keeps one registration alive until Deregister.
type Registrar struct {
	cfg        Config
	prefix     string
	holdPrefix string
	value      []byte
	leases     Leases
	opTO       time.Duration
	backoffs   backoff.Policy
	log        hclog.Logger
	m          *Metrics

	removeMu sync.Mutex // serializes Deregister, without holding mu over etcd

	mu      sync.Mutex
	state   State
	changed chan struct{} // closed and replaced on every state change
	cancel  context.CancelFunc
	done    chan struct{}

	// Owned by the run goroutine; read by Deregister only after it ended.
	lease     clientv3.LeaseID
	holdLease clientv3.LeaseID // 0: none yet, or holds off
	key       string
	slot      int
	rev       int64 // revision at which the key was last known to be ours
	// unsure: key was written by a claim whose outcome is unknown (the
	// call ended before etcd answered). The next claim reads it back, and
	// a removal removes it all the same, so a key etcd did apply is never
	// left behind on a lease that lives on.
	unsure    bool
	lastCause string // of the last failure logged at warn level
}

// New validates cfg and returns a registrar that has not registered yet. Every
// error is a *FieldError naming the offending field.
func New(cfg Config) (*Registrar, error) {
	if cfg.Client == nil {
		return nil, fieldErr("client", "an etcd client is required")
	}
	if cfg.Prefix == "" {
		cfg.Prefix = DefaultPrefix
	}
	if err := ValidatePrefix(cfg.Prefix); err != nil {
		return nil, err
	}
	if err := ValidateName("job", cfg.Job); err != nil {
		return nil, err
	}
	if err := ValidateName("host", cfg.Host); err != nil {
		return nil, err
	}
	if cfg.TTL == 0 {
		cfg.TTL = DefaultTTL
	}
	if err := ValidateTTL(cfg.TTL); err != nil {
		return nil, err
	}
	cfg.SlotHold = EffectiveSlotHold(cfg.SlotHold)
	if cfg.Value.StartedAt.IsZero() {
		// To the nanosecond: a host agent that lost its state tells the
		// registrations it made (a process's start, whole seconds) from
		// those workers made themselves.
		cfg.Value.StartedAt = time.Now().UTC()
	}
	value, err := cfg.Value.Encode()
	if err != nil {
		return nil, err
	}
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	leases, err := leasesFor(cfg)
	if err != nil {
		return nil, err
	}
	m := cfg.Metrics
	if m == nil {
		m = NewMetrics(nil)
	}
	slots := Key{Prefix: cfg.Prefix, Job: cfg.Job, Host: cfg.Host}
	r := &Registrar{
		cfg:        cfg,
		prefix:     slots.SlotPrefix(),
		holdPrefix: slots.HoldSlotPrefix(),
		value:      value,
		leases:     leases,
		// An etcd call may wait for a connection; bound it so a dead
		// endpoint turns into a retry rather than a hang.
		opTO:     min(max(cfg.TTL, 2*time.Second), 5*time.Second),
		backoffs: backoff.Policy{Base: 100 * time.Millisecond, Max: min(cfg.TTL/2, 3*time.Second)},
		log:      cfg.Logger.With("job", cfg.Job, "host", cfg.Host),
		m:        m,
		changed:  make(chan struct{}),
		slot:     -1,
	}
	r.state.Slot = -1
	if cfg.Resume.Key != "" {
		k, err := ParseKey(cfg.Prefix, cfg.Resume.Key)
		if err != nil {
			return nil, fieldErr("resume.key", "%v", err)
		}
		if k.Job != cfg.Job || k.Host != cfg.Host {
			return nil, fieldErr("resume.key", "%q is not a key of job %q on host %q", cfg.Resume.Key, cfg.Job, cfg.Host)
		}
		r.key, r.slot, r.lease = cfg.Resume.Key, k.Slot, cfg.Resume.Lease
		if r.holds() {
			r.holdLease = cfg.Resume.HoldLease
		}
	}
	return r, nil
}

// leasesFor returns cfg.Leases, or leases of the registration's own, and
// checks that they agree with cfg.
func leasesFor(cfg Config) (Leases, error) {
	if cfg.Leases == nil {
		return OwnLeases(LeasesConfig{Client: cfg.Client, Prefix: cfg.Prefix, TTL: cfg.TTL, SlotHold: cfg.SlotHold, Logger: cfg.Logger})
	}
	ls := cfg.Leases.settings()
	if ls.Prefix != cfg.Prefix || ls.TTL != cfg.TTL || ls.SlotHold != cfg.SlotHold {
		return nil, fieldErr("leases", "the leases are for prefix %q, TTL %s and slot hold %s; the registration has %q, %s and %s",
			ls.Prefix, ls.TTL, ls.SlotHold, cfg.Prefix, cfg.TTL, cfg.SlotHold)
	}
	return cfg.Leases, nil
}

// holds reports whether slot holds are on.
func (r *Registrar) holds() bool { return r.cfg.SlotHold > 0 }

// HoldWindow is how long after a registration ends its slot may stay held
// at most: the TTL of the hold's lease, 1.5 x (ttl + hold).
func HoldWindow(ttl, hold time.Duration) time.Duration { return 3 * (ttl + hold) / 2 }

// LeaseExpiryLag is how late etcd may delete an expired lease's keys: its
// leader looks for expired leases every 500 ms and revokes them in
// batches, so a hold outlives its lease's TTL by up to about a second.
const LeaseExpiryLag = time.Second

// MaxSlots is the bound on the slots (instance values) one (job, host)
// uses: peak, the most registrations alive at once, plus the most
// registrations that ended within any HoldWindow (plus LeaseExpiryLag),
// given their end times. Without holds, it is peak.
func MaxSlots(peak int, ends []time.Time, ttl, hold time.Duration) int {
	if hold <= 0 {
		return peak
	}
	window := HoldWindow(ttl, hold) + LeaseExpiryLag
	ends = slices.SortedFunc(slices.Values(ends), time.Time.Compare)
	most := 0
	for i := range ends {
		n := sort.Search(len(ends), func(j int) bool { return ends[j].After(ends[i].Add(window)) }) - i
		most = max(most, n)
	}
	return peak + most
}

// ValidateTTL checks a lease TTL: etcd silently extends a shorter one than
// MinTTL, which would make a crashed worker linger longer than configured.
func ValidateTTL(ttl time.Duration) error {
	if ttl < MinTTL {
		return fieldErr("ttl", "%s is below etcd's minimum lease TTL of %s", ttl, MinTTL)
	}
	return nil
}

// seconds rounds d up to whole seconds, etcd's unit of lease TTLs.
func seconds(d time.Duration) int64 { return int64((d + time.Second - 1) / time.Second) }

// Register starts keeping the registration alive in the background and
// returns at once: an application must start even when etcd is down. ctx
// carries values only (docs/DEVELOPING.md): the loop lives until Deregister
// (which removes the key at once) or Detach (which leaves it to expire).
// Calling Register again has no effect.
func (r *Registrar) Register(ctx context.Context) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.done != nil {
		return
	}
	ctx, r.cancel = context.WithCancel(context.WithoutCancel(ctx))
	r.done = make(chan struct{})
	r.m.Registrations.WithLabelValues("retrying").Inc()
	go r.run(ctx)
}

// Deregister stops the loop and removes the key at once, as its Leases
// release a registration: a lease of its own is revoked, a key on a host's
// lease is deleted if it still holds this registration. The removal is
// bounded by ctx and by the TTL; if it fails, a lease of its own expires
// with the key, and a key on a host's lease stays until the caller retries
// (Leases.Release of Removal). The slot's hold is left to expire (see
// Config.SlotHold). A key whose claim had an unknown outcome (the call
// ended before etcd's answer) is removed all the same. Deregister before
// Register does nothing.
func (r *Registrar) Deregister(ctx context.Context) error {
	if err := r.Detach(ctx); err != nil {
		return fmt.Errorf("deregister: %w", err)
	}
	// The loop has ended: its fields are ours. removeMu, not mu, so that
	// State and Changed answer while etcd is slow.
	r.removeMu.Lock()
	defer r.removeMu.Unlock()
	r.mu.Lock()
	started := r.done != nil
	r.mu.Unlock()
	if !started || r.lease == 0 {
		return nil
	}
	rctx, rcancel := context.WithTimeout(ctx, r.cfg.TTL)
	defer rcancel()
	res, err := r.leases.Release(rctx, r.Removal())
	if err != nil {
		return fmt.Errorf("deregister %s: %w", r.key, err)
	}
	r.lease = 0
	r.noteRemoved(res)
	return nil
}

// noteRemoved records and logs what a Deregister removed.
func (r *Registrar) noteRemoved(res Released) {
	r.setState(func(s *State) {
		s.Removed, s.HoldDropped = "", res.HoldDropped
		if res.Deleted {
			s.Removed = r.key
		}
	})
	r.log.Debug("deregistered", "key", r.key, "deleted", res.Deleted)
}

// Removal is what Leases.Release needs to end this registration once its
// loop has stopped (after Detach or a failed Deregister): its key (also
// one whose claim had an unknown outcome), value and leases. Zero before
// any claim.
func (r *Registrar) Removal() Removal {
	r.mu.Lock()
	running := r.done != nil
	r.mu.Unlock()
	if running {
		select {
		case <-r.done:
		default:
			return Removal{} // the loop owns the fields
		}
	}
	return Removal{Key: r.key, Value: r.value, Lease: r.lease, HoldLease: r.holdLease}
}

// IsNoSpace reports whether err is etcd's "database space exceeded": its
// NOSPACE alarm is on, and it refuses every write but deletes until the
// database is compacted, defragmented and the alarm disarmed.
func IsNoSpace(err error) bool {
	return errors.Is(err, rpctypes.ErrNoSpace) || errors.Is(err, rpctypes.ErrGRPCNoSpace)
}

// Detach stops the loop without revoking: the key lives on until its lease
// expires, unless another process adopts it first (Config.Resume). A host
// agent detaches on restart so that its workers stay targets meanwhile.
func (r *Registrar) Detach(ctx context.Context) error {
	r.mu.Lock()
	cancel, done := r.cancel, r.done
	r.mu.Unlock()
	if done == nil {
		return nil
	}
	cancel()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("detach %s: %w", r.prefix, ctx.Err())
	}
}

// Changed returns a channel closed at the next change of State: a caller
// that records the lease (a state file) waits on it instead of polling.
func (r *Registrar) Changed() <-chan struct{} {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.changed
}

// State returns a copy of the current state.
func (r *Registrar) State() State {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.state
}

// WaitRegistered blocks until the registration is in etcd or ctx ends.
func (r *Registrar) WaitRegistered(ctx context.Context) error {
	for {
		r.mu.Lock()
		ok, ch, err := r.state.Registered, r.changed, r.state.LastError
		r.mu.Unlock()
		if ok {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			if err != nil {
				return fmt.Errorf("wait registered: %w (last error: %v)", ctx.Err(), err)
			}
			return fmt.Errorf("wait registered: %w", ctx.Err())
		}
	}
}

func (r *Registrar) setState(f func(*State)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	before := r.state.Registered
	f(&r.state)
	if before != r.state.Registered {
		from, to := "retrying", "registered"
		if before {
			from, to = to, from
		}
		r.m.Registrations.WithLabelValues(from).Dec()
		r.m.Registrations.WithLabelValues(to).Inc()
	}
	close(r.changed)
	r.changed = make(chan struct{})
}

// run owns the registration until ctx ends: claim, hold, and after any loss
// claim again, for ever. Unlike go-kit's sd/etcdv3 it never gives up.
func (r *Registrar) run(ctx context.Context) {
	defer close(r.done)
	defer func() {
		r.setState(func(s *State) { s.Registered = false })
		r.m.Registrations.WithLabelValues("retrying").Dec()
	}()
	failures := 0
	for {
		start := time.Now()
		kept, err := r.claim(ctx)
		if err == nil {
			r.m.Duration.Observe(time.Since(start).Seconds())
			r.mu.Lock()
			again := r.state.Registrations > 0 && !kept
			r.mu.Unlock()
			if again {
				r.m.Reregistrations.Inc()
			}
			r.setState(func(s *State) {
				s.Registered, s.Key, s.Slot, s.LeaseID, s.LastError = true, r.key, r.slot, r.lease, nil
				s.HoldLeaseID = r.holdLease
				if !kept {
					s.Registrations++
				}
			})
			r.log.Info("registered", "key", r.key, "lease", fmt.Sprintf("%x", int64(r.lease)))
			r.lastCause = ""
			held := time.Now()
			err = r.hold(ctx)
			if time.Since(held) > r.cfg.TTL {
				failures = 0 // a registration that lasted resets the backoff
			}
		}
		if ctx.Err() != nil {
			return
		}
		r.setState(func(s *State) { s.Registered, s.LastError = false, err })
		r.logFailure(err)
		delay := r.backoffs.Delay(failures)
		failures++
		select {
		case <-time.After(delay):
		case <-ctx.Done():
			return
		}
	}
}

// logFailure logs a failed claim or a lost registration at warn level once
// per cause in a row (a retry every few seconds through a long outage says
// nothing new), and counts a failed claim by reason.
func (r *Registrar) logFailure(err error) {
	var lost *errLost
	cause := ""
	if errors.As(err, &lost) {
		cause = "lost " + lost.reason
	} else {
		cause = failureReason(err)
		r.m.ClaimFailures.WithLabelValues(cause).Inc()
	}
	if cause == r.lastCause {
		r.log.Debug("registration lost or failed; retrying", "error", err)
		return
	}
	r.lastCause = cause
	if cause == "nospace" {
		r.log.Error("etcd is out of space (NOSPACE alarm) and refuses new registrations; retrying. Compact and defragment etcd, then disarm the alarm (docs/RUNBOOK.md, WorkersdEtcdAlarm)", "error", err)
		return
	}
	r.log.Warn("registration lost or failed; retrying", "error", err)
}

// failureReason is the bounded reason label of a failed etcd call.
func failureReason(err error) string {
	switch {
	case IsNoSpace(err):
		return "nospace"
	case outcomeUnknown(err):
		return "unreachable"
	}
	return "other"
}

// claim makes sure the worker's key is in etcd on a live lease: it keeps a
// registration that survived (etcd restarted with its data), otherwise it
// revokes the old lease, grants a new one and claims the previous slot or
// the lowest free one, with the slot's hold. kept says an existing
// registration was kept; a key found held after a claim of unknown
// outcome is a new registration, not a kept one.
func (r *Registrar) claim(ctx context.Context) (kept bool, err error) {
	unsure := r.unsure
	kept, err = r.claimOnce(ctx)
	if err == nil {
		r.unsure = false
		kept = kept && !unsure
	}
	return kept, err
}

func (r *Registrar) claimOnce(ctx context.Context) (kept bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, r.opTO)
	defer cancel()
	if kept, err := r.acquireLeases(ctx); err != nil || kept {
		return kept, err
	}
	if r.slot >= 0 {
		ok, err := r.tryClaim(ctx, r.slot)
		if err != nil || ok {
			return false, err
		}
	}
	for {
		n, err := r.lowestFree(ctx)
		if err != nil {
			return false, err
		}
		ok, err := r.tryClaim(ctx, n)
		if err != nil || ok {
			return false, err
		}
	}
}

// acquireLeases sets the leases for the next claim. A registration that
// lived on (etcd restarted with its data, or one adopted with Resume) is
// kept in place, on its lease or, when the Leases give another, moved onto
// it in one transaction (kept then); else the claim that follows writes
// its key anew.
func (r *Registrar) acquireLeases(ctx context.Context) (kept bool, err error) {
	prev, mine := r.lease, r.mine()
	id, err := r.leases.acquire(ctx, false, prev, mine)
	if err != nil {
		return false, err
	}
	r.lease = id
	if r.holds() {
		hold, err := r.leases.acquire(ctx, true, r.holdLease, mine)
		if err != nil {
			return false, err
		}
		r.holdLease = hold
	}
	// A key on a lease that was lost is not held (stillHeld compares
	// leases).
	if kept, err := r.keepIfHeld(ctx); err != nil || kept {
		return kept, err
	}
	switch {
	case prev == 0:
	case prev != id:
		return r.moveFrom(ctx, prev)
	default:
		if r.lease, err = r.leases.renew(ctx, prev); err != nil {
			r.lease = prev
		}
	}
	return false, err
}

// mine are the keys this registration may have on its leases: its key
// and its slot's hold.
func (r *Registrar) mine() []string {
	if r.slot < 0 {
		return nil
	}
	return []string{r.key, r.slotKey(r.slot).HoldKey()}
}

// stillHeld reports whether the current key still holds this registrar's
// value on its lease.
func (r *Registrar) stillHeld(ctx context.Context) (bool, error) {
	if r.key == "" {
		return false, nil
	}
	resp, err := r.cfg.Client.Get(ctx, r.key)
	if err != nil {
		return false, fmt.Errorf("check key %s: %w", r.key, err)
	}
	if len(resp.Kvs) == 1 && r.ours(resp.Kvs[0]) {
		r.rev = resp.Header.Revision
		return true, nil
	}
	return false, nil
}

// moveFrom puts the current key, if it still holds this registration on
// lease from, onto r.lease in one transaction, and holds its slot as
// keepIfHeld does: the registration keeps its slot, so its series keep
// their instance, when it changes leases.
func (r *Registrar) moveFrom(ctx context.Context, from clientv3.LeaseID) (bool, error) {
	if r.key == "" {
		return false, nil
	}
	resp, err := r.cfg.Client.Txn(ctx).If(
		clientv3.Compare(clientv3.LeaseValue(r.key), "=", from),
		clientv3.Compare(clientv3.Value(r.key), "=", string(r.value)),
	).Then(clientv3.OpPut(r.key, string(r.value), clientv3.WithLease(r.lease))).Commit()
	if errors.Is(err, rpctypes.ErrLeaseNotFound) {
		r.leaseNotFound(ctx)
	}
	if err != nil {
		return false, fmt.Errorf("move %s onto lease %x: %w", r.key, int64(r.lease), err)
	}
	if !resp.Succeeded {
		return false, nil
	}
	r.rev = resp.Header.Revision
	r.log.Info("moved the adopted key onto this registration's lease", "key", r.key, "from", fmt.Sprintf("%x", int64(from)), "to", fmt.Sprintf("%x", int64(r.lease)))
	r.keepHold(ctx)
	return true, nil
}

// slotKey is the Key of slot n of this registrar's (job, host).
func (r *Registrar) slotKey(n int) Key {
	return Key{Prefix: r.cfg.Prefix, Job: r.cfg.Job, Host: r.cfg.Host, Slot: n}
}

func (r *Registrar) ours(kv *mvccpb.KeyValue) bool {
	return clientv3.LeaseID(kv.Lease) == r.lease && bytes.Equal(kv.Value, r.value)
}

// tryClaim creates the key for slot n if, and only if, nobody holds it:
// no registration, and no hold but this registrar's own. The hold is put
// with the key.
func (r *Registrar) tryClaim(ctx context.Context, n int) (bool, error) {
	key := r.slotKey(n).String()
	put := clientv3.OpPut(key, string(r.value), clientv3.WithLease(r.lease))
	free := clientv3.Compare(clientv3.CreateRevision(key), "=", 0)
	txn := r.cfg.Client.Txn(ctx)
	if r.holdLease == 0 {
		txn = txn.If(free).Then(put)
	} else {
		// "No hold or ours": a missing key's lease compares as 0.
		hk := r.slotKey(n).HoldKey()
		hput := clientv3.OpPut(hk, "", clientv3.WithLease(r.holdLease))
		txn = txn.If(free, clientv3.Compare(clientv3.LeaseValue(hk), "=", r.holdLease)).Then(put, hput).
			Else(clientv3.OpTxn([]clientv3.Cmp{free, clientv3.Compare(clientv3.LeaseValue(hk), "=", 0)}, []clientv3.Op{put, hput}, nil))
	}
	resp, err := txn.Commit()
	if errors.Is(err, rpctypes.ErrLeaseNotFound) {
		r.leaseNotFound(ctx)
	}
	if err != nil {
		if outcomeUnknown(err) {
			// etcd may have applied it: remember the key, so the next
			// claim finds it (keepIfHeld) and a removal deletes it.
			r.key, r.slot, r.unsure = key, n, true
		}
		return false, fmt.Errorf("claim slot %d: %w", n, err)
	}
	if !resp.Succeeded && (r.holdLease == 0 || !resp.Responses[0].GetResponseTxn().Succeeded) {
		return false, nil
	}
	r.key, r.slot, r.rev, r.unsure = key, n, resp.Header.Revision, false
	return true, nil
}

// outcomeUnknown reports whether a write that failed with err may still
// have been applied: etcd refused it for a reason of its own (an answer),
// or the answer never came (a context's end, a lost connection).
func outcomeUnknown(err error) bool {
	var etcdErr rpctypes.EtcdError
	return !errors.As(err, &etcdErr) || errors.Is(err, rpctypes.ErrTimeout) ||
		errors.Is(err, rpctypes.ErrTimeoutDueToLeaderFail) || errors.Is(err, rpctypes.ErrTimeoutDueToConnectionLost) ||
		errors.Is(err, rpctypes.ErrLeaderChanged)
}

// leaseNotFound handles etcd's "lease not found" on a put (a wiped
// cluster), as the Leases say.
func (r *Registrar) leaseNotFound(ctx context.Context) {
	if r.leases.notFound(ctx, r.lease, r.holdLease) {
		r.holdLease = 0
	}
}

// keepIfHeld keeps the current key if it still holds this registration
// (etcd restarted with its data, a lease adopted with Resume), with its
// slot's hold.
func (r *Registrar) keepIfHeld(ctx context.Context) (bool, error) {
	held, err := r.stillHeld(ctx)
	if err != nil || !held {
		return false, err
	}
	r.keepHold(ctx)
	return true, nil
}

// keepHold is ensureHold for a registration that lives: it stays alive
// even when its hold cannot be written (etcd roles without the hold
// prefix), as only the exactness of a later reuse of the slot is at stake.
func (r *Registrar) keepHold(ctx context.Context) {
	if err := r.ensureHold(ctx); err != nil {
		r.log.Warn("cannot hold the slot; a worker started within the hold after this one ends may reuse it", "key", r.key, "error", err)
	}
}

// ensureHold puts the hold of a kept registration's slot on this
// registrar's hold lease (granted when lost), so the slot is held after
// the registration ends.
func (r *Registrar) ensureHold(ctx context.Context) error {
	if !r.holds() {
		return nil
	}
	cli := r.cfg.Client
	if r.holdLease == 0 {
		hold, err := r.leases.acquire(ctx, true, 0, nil)
		if err != nil {
			return err
		}
		r.holdLease = hold
	}
	// The registration of this slot is ours, so is its hold: put it on our
	// lease even over a predecessor's (an adopted slot), whose lease nobody
	// keeps alive any more.
	hk := r.slotKey(r.slot).HoldKey()
	if _, err := cli.Put(ctx, hk, "", clientv3.WithLease(r.holdLease)); err != nil {
		if errors.Is(err, rpctypes.ErrLeaseNotFound) {
			r.leaseNotFound(ctx)
		}
		return fmt.Errorf("hold slot %d: %w", r.slot, err)
	}
	return nil
}

// lowestFree lists the taken slots of (job, host), registered or held by
// another registrar, and returns the lowest free one. Keys that are not
// canonical slots do not block a slot.
func (r *Registrar) lowestFree(ctx context.Context) (int, error) {
	resp, err := r.cfg.Client.Get(ctx, r.prefix, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		return 0, fmt.Errorf("list slots under %s: %w", r.prefix, err)
	}
	taken := make([]int, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		if n, err := parseSlot(string(kv.Key[len(r.prefix):])); err == nil {
			taken = append(taken, n)
		}
	}
	if r.holds() {
		holds, err := r.cfg.Client.Get(ctx, r.holdPrefix, clientv3.WithPrefix(), clientv3.WithKeysOnly())
		if err != nil {
			return 0, fmt.Errorf("list slot holds under %s: %w", r.holdPrefix, err)
		}
		for _, kv := range holds.Kvs {
			n, err := parseSlot(string(kv.Key[len(r.holdPrefix):]))
			if err == nil && clientv3.LeaseID(kv.Lease) != r.holdLease {
				taken = append(taken, n)
			}
		}
	}
	sort.Ints(taken)
	n := 0
	for _, t := range taken {
		if t == n {
			n++
		} else if t > n {
			break
		}
	}
	if n > MaxSlot {
		return 0, fmt.Errorf("no free slot under %s", r.prefix)
	}
	return n, nil
}

// errLost explains why a held registration ended.
type errLost struct{ reason, detail string }

func (e *errLost) Error() string { return e.reason + ": " + e.detail }

// hold watches the leases (keeping them alive where that is the
// registration's job) and the key until one of them is lost.
func (r *Registrar) hold(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	key, hold, err := r.watchLeases(ctx)
	defer func() {
		cancel()
		key.wait()
		hold.wait()
	}()
	if err != nil {
		return err
	}
	// cli.Watch blocks until it has a watch stream, that is while etcd is
	// unreachable when the old stream broke: called here, it would stop
	// this loop from seeing a lease's loss and keep the registration
	// "registered" through a whole outage. So it runs aside, and its
	// channel arrives on watchReady; it returns when ctx ends.
	watchReady := make(chan clientv3.WatchChan, 1)
	watch := func() {
		rev := r.rev
		go func() {
			watchReady <- r.cfg.Client.Watch(clientv3.WithRequireLeader(ctx), r.key, clientv3.WithRev(rev+1))
		}()
	}
	var wch clientv3.WatchChan // nil until the watch is there
	watch()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-key.lost:
			return r.leaseLost(ctx, key)
		case <-hold.lost:
			// The registration may live on; claim keeps it and puts the
			// hold back on a hold lease acquired anew.
			r.holdLease = 0
			return r.leaseLost(ctx, hold)
		case wch = <-watchReady:
		case wr, ok := <-wch:
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if err := r.checkEvents(wr.Events); err != nil {
				return err
			}
			if !ok || wr.Canceled || wr.Err() != nil {
				// The watch broke (compaction, no leader, stream closed):
				// look at the key itself, then watch again. The leases
				// stay the judges of whether etcd is reachable.
				if err := r.recheck(ctx); err != nil {
					return err
				}
				wch = nil
				watch()
			}
		}
	}
}

// watchedLease is a lease's loss while held, and the wait for what watches
// it.
type watchedLease struct {
	leaseWatch
	wait func()
}

// watchLeases starts watching the key's lease and the hold's until ctx
// ends; the waits are set even on an error.
func (r *Registrar) watchLeases(ctx context.Context) (key, hold watchedLease, err error) {
	key.wait, hold.wait = func() {}, func() {}
	key.leaseWatch, key.wait, err = r.leases.watch(ctx, false, r.lease)
	if err != nil {
		key.wait = func() {}
		r.m.KeepaliveFailures.Inc()
		return key, hold, r.lost("keepalive_failed", err.Error())
	}
	hold.leaseWatch, hold.wait, err = r.leases.watch(ctx, true, r.holdLease)
	if err != nil {
		hold.wait = func() {}
		r.m.KeepaliveFailures.Inc()
		return key, hold, r.lost("keepalive_failed", err.Error())
	}
	return key, hold, nil
}

// leaseLost is the loss of a lease w watched, unless the hold is ending.
func (r *Registrar) leaseLost(ctx context.Context, w watchedLease) error {
	if ctx.Err() != nil {
		return ctx.Err() // the keep-alive ended with the hold
	}
	r.m.KeepaliveFailures.Inc()
	return r.lost(w.why())
}

// checkEvents is the loss of the key that events show, if any.
func (r *Registrar) checkEvents(events []*clientv3.Event) error {
	for _, ev := range events {
		if ev.Type == clientv3.EventTypeDelete {
			return r.lost("key_deleted", r.key)
		}
		if !r.ours(ev.Kv) {
			return r.lost("key_overwritten", fmt.Sprintf("%s now holds lease %x", r.key, ev.Kv.Lease))
		}
		r.rev = ev.Kv.ModRevision
	}
	return nil
}

// recheck verifies the key after a broken watch, waiting a moment first so a
// watch that keeps failing does not spin.
func (r *Registrar) recheck(ctx context.Context) error {
	select {
	case <-time.After(r.backoffs.Base):
	case <-ctx.Done():
		return ctx.Err()
	}
	gctx, cancel := context.WithTimeout(ctx, r.opTO)
	defer cancel()
	resp, err := r.cfg.Client.Get(gctx, r.key)
	if err != nil {
		return nil // unreachable: the keep-alive will tell if the lease is gone
	}
	if len(resp.Kvs) != 1 || !r.ours(resp.Kvs[0]) {
		return r.lost("key_lost", r.key+" no longer holds this registration")
	}
	r.rev = resp.Header.Revision
	return nil
}

func (r *Registrar) lost(reason, detail string) error {
	r.m.Losses.WithLabelValues(reason).Inc()
	return &errLost{reason: reason, detail: detail}
}
