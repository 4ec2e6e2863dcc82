package registrar

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Leases are the etcd leases registrations put their keys and their slots'
// holds on, with the rules of each lease's life: how it is granted or
// resumed, kept alive, lost, and how a registration on it ends. There are
// two kinds:
//
//   - OwnLeases: each registration has a lease of its own for its key and
//     one for its slot's hold, kept alive by the registration; it ends by
//     revoking its key's lease. The default (Config.Leases nil).
//   - HostLeases: one lease for the keys of every registration of a host
//     and one for their holds, kept alive once by their owner (a host
//     agent, HostLeases.Run); a registration ends by deleting its key and
//     moving its hold onto a lease of its own, left to expire.
//
// A registration asks its Leases and never branches on their kind, and the
// adoption rules live here alone: a registration adopted on a lease of the
// other kind moves its key in place (it keeps its slot), and a lease that
// carries other registrations' keys is never revoked by one of them.
//
// The interface is sealed: its other methods are the registrar's.
type Leases interface {
	// Release ends a registration whose loop has stopped (Registrar.Removal,
	// or what a restarted process recorded of it), whatever its lease holds
	// of it now. A failure changes nothing and may be retried.
	//
	// With etcd out of space (NOSPACE), which refuses lease grants and puts
	// but allows deletes and revokes, the key is removed all the same and
	// its hold with it (Released.HoldDropped): a dead worker never stays a
	// target for want of space.
	Release(ctx context.Context, rm Removal) (Released, error)

	// settings are what every registration on the leases must agree with.
	settings() LeasesConfig
	// acquire returns the lease for a registration's key (hold false) or
	// its slot's hold (hold true), given the one it was on (prev, 0 for
	// none) and its own keys (mine): prev when the registration stays on
	// it, else another, granted or shared.
	acquire(ctx context.Context, hold bool, prev clientv3.LeaseID, mine []string) (clientv3.LeaseID, error)
	// renew replaces prev, a key's lease that acquire kept but that holds
	// none of the registration's keys any more: a lease of its own must
	// not keep alive whatever else it may carry.
	renew(ctx context.Context, prev clientv3.LeaseID) (clientv3.LeaseID, error)
	// watch tells the loss of id while a registration is held, keeping it
	// alive if that is the registration's job, until ctx ends; wait waits
	// for what watch started once ctx has ended.
	watch(ctx context.Context, hold bool, id clientv3.LeaseID) (w leaseWatch, wait func(), err error)
	// notFound handles etcd's "lease not found" for key or hold (a wiped
	// cluster); forgetHold says the registration's hold lease is gone and
	// must be acquired anew.
	notFound(ctx context.Context, key, hold clientv3.LeaseID) (forgetHold bool)
}

// LeasesConfig configures Leases of either kind.
type LeasesConfig struct {
	// Client is the etcd client; the caller owns it.
	Client *clientv3.Client
	// Prefix of the registrations on the leases. Optional, defaults to
	// DefaultPrefix.
	Prefix string
	// TTL of the keys' lease. Optional, defaults to DefaultTTL.
	TTL time.Duration
	// SlotHold as in Config.SlotHold: a hold's lease has a TTL of
	// HoldWindow(TTL, SlotHold). Optional, defaults to DefaultSlotHold;
	// negative turns holds off.
	SlotHold time.Duration
	// Logger; nil discards.
	Logger hclog.Logger
}

// normalized fills the defaults and validates.
func (c LeasesConfig) normalized() (LeasesConfig, error) {
	if c.Client == nil {
		return c, fieldErr("client", "an etcd client is required")
	}
	if c.Prefix == "" {
		c.Prefix = DefaultPrefix
	}
	if err := ValidatePrefix(c.Prefix); err != nil {
		return c, err
	}
	if c.TTL == 0 {
		c.TTL = DefaultTTL
	}
	if err := ValidateTTL(c.TTL); err != nil {
		return c, err
	}
	c.SlotHold = EffectiveSlotHold(c.SlotHold)
	if c.Logger == nil {
		c.Logger = hclog.NewNullLogger()
	}
	return c, nil
}

// holdTTL is the TTL of a hold's lease; 0 when holds are off.
func (c LeasesConfig) holdTTL() time.Duration {
	if c.SlotHold <= 0 {
		return 0
	}
	return HoldWindow(c.TTL, c.SlotHold)
}

// Removal names a registration to end (Leases.Release).
type Removal struct {
	// Key of the registration; empty when it never claimed one.
	Key string
	// Value, when set, must be the key's value for the key to be deleted:
	// a key that another registration on the same lease claimed since is
	// not touched. Empty: any value.
	Value []byte
	// Lease the key must be on; HoldLease the lease of its slot's hold
	// (0: leave holds alone).
	Lease, HoldLease clientv3.LeaseID
}

// Released says what a Release did.
type Released struct {
	// Deleted: the key held the registration and is gone.
	Deleted bool
	// HoldDropped: etcd is out of space (NOSPACE), which refuses the
	// lease a hold moves onto, so the hold was deleted with the key
	// instead. No worker can claim a slot meanwhile either (a claim
	// writes), so the slot stays free of reuse until space returns.
	HoldDropped bool
}

// leaseWatch is one lease's loss as a held registration sees it.
type leaseWatch struct {
	// lost is closed when the lease is lost; nil (never) for no lease.
	lost <-chan struct{}
	// why says how, once lost is closed.
	why func() (reason, detail string)
}

// ownLeases give each registration leases of its own.
type ownLeases struct{ cfg LeasesConfig }

// OwnLeases returns the default Leases: each registration's own. A caller
// needs them only to Release what an earlier process registered.
func OwnLeases(cfg LeasesConfig) (Leases, error) {
	cfg, err := cfg.normalized()
	if err != nil {
		return nil, err
	}
	return ownLeases{cfg}, nil
}

func (o ownLeases) settings() LeasesConfig { return o.cfg }

func (o ownLeases) acquire(ctx context.Context, hold bool, prev clientv3.LeaseID, mine []string) (clientv3.LeaseID, error) {
	if prev != 0 {
		// Adopted: keep it alive as the registration's own only if nobody
		// else is on it. A host's lease (an agent that shared it before)
		// is left to its keys, and the registration moves to its own.
		alone, err := alone(ctx, o.cfg.Client, prev, mine)
		if err != nil || alone {
			return prev, err
		}
	}
	ttl, what := o.cfg.TTL, "lease"
	if hold {
		ttl, what = o.cfg.holdTTL(), "hold lease"
	}
	g, err := o.cfg.Client.Grant(ctx, seconds(ttl))
	if err != nil {
		return 0, fmt.Errorf("grant %s: %w", what, err)
	}
	return g.ID, nil
}

func (o ownLeases) renew(ctx context.Context, prev clientv3.LeaseID) (clientv3.LeaseID, error) {
	// A lease that survived on the server must not keep a second key
	// alive next to the new claim.
	if _, err := o.cfg.Client.Revoke(ctx, prev); err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) {
		return 0, fmt.Errorf("revoke previous lease %x: %w", int64(prev), err)
	}
	return o.acquire(ctx, false, 0, nil)
}

func (o ownLeases) watch(ctx context.Context, hold bool, id clientv3.LeaseID) (leaseWatch, func(), error) {
	if id == 0 {
		return leaseWatch{}, func() {}, nil
	}
	ka, err := o.cfg.Client.KeepAlive(ctx, id)
	if err != nil {
		return leaseWatch{}, nil, err
	}
	// As etcd's concurrency.Session does: the keep-alive's end is the
	// lease's loss. The goroutine ends with ctx, which closes ka.
	lost := make(chan struct{})
	var reason, detail string
	go func() {
		defer close(lost)
		for resp := range ka {
			if resp == nil || resp.TTL <= 0 {
				reason, detail = "lease_expired", fmt.Sprintf("lease %x not found", int64(id))
				return
			}
		}
		reason, detail = "keepalive_closed", fmt.Sprintf("lease %x expired or etcd unreachable for a TTL", int64(id))
	}()
	why := func() (string, string) { return reason, detail }
	if hold {
		why = func() (string, string) { return "hold_lost", "the slot hold's lease expired or etcd was unreachable" }
	}
	return leaseWatch{lost: lost, why: why}, func() { <-lost }, nil
}

// notFound: the hold lease is granted anew at the next claim; the key's
// lease is found gone by acquire.
func (ownLeases) notFound(context.Context, clientv3.LeaseID, clientv3.LeaseID) bool { return true }

// Release revokes the key's lease: its key goes with it. The hold, on a
// lease of its own, is left to expire.
func (o ownLeases) Release(ctx context.Context, rm Removal) (Released, error) {
	if rm.Lease == 0 {
		return Released{}, nil
	}
	if _, err := o.cfg.Client.Revoke(ctx, rm.Lease); err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) {
		return Released{}, fmt.Errorf("revoke lease %x: %w", int64(rm.Lease), err)
	}
	// The revoke removed whatever key the lease carried; which one is
	// known only when the claim's outcome was.
	return Released{Deleted: rm.Key != ""}, nil
}

// alone reports whether lease is alive and carries none but the keys mine.
func alone(ctx context.Context, cli *clientv3.Client, lease clientv3.LeaseID, mine []string) (bool, error) {
	resp, err := cli.TimeToLive(ctx, lease, clientv3.WithAttachedKeys())
	if err != nil {
		if errors.Is(err, rpctypes.ErrLeaseNotFound) {
			return false, nil
		}
		return false, fmt.Errorf("keys on lease %x: %w", int64(lease), err)
	}
	if resp.TTL <= 0 {
		return false, nil
	}
	for _, k := range resp.Keys {
		if !contains(mine, string(k)) {
			return false, nil
		}
	}
	return true, nil
}

func contains(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}

// HostLeases are the leases a host's registrations share (Config.Leases):
// a host agent keeps one lease alive for all its workers' keys and one for
// their holds, instead of two per worker, so etcd sees two keep-alive
// streams per host whatever the number of workers. A registration on them
// ends by deleting its key (Release) rather than revoking; the death of
// the process that keeps them alive (Run) expires every key on them after
// the TTL, as with leases of their own.
//
// When etcd loses one (unreachable for a TTL, wiped), every registration
// on it claims again, on a lease granted anew.
type HostLeases struct {
	cfg       LeasesConfig
	key, hold *sharedLease // hold nil when holds are off
}

// NewHostLeases returns a host's leases. resumeKey and resumeHold, when
// not 0, are leases an earlier process of the host granted (a restarted
// agent): they are kept alive if etcd still has them.
func NewHostLeases(cfg LeasesConfig, resumeKey, resumeHold clientv3.LeaseID) (*HostLeases, error) {
	cfg, err := cfg.normalized()
	if err != nil {
		return nil, err
	}
	h := &HostLeases{cfg: cfg, key: newSharedLease(cfg.Client, cfg.TTL, resumeKey, cfg.Logger.Named("lease"))}
	if ttl := cfg.holdTTL(); ttl > 0 {
		h.hold = newSharedLease(cfg.Client, ttl, resumeHold, cfg.Logger.Named("hold_lease"))
	}
	return h, nil
}

// Run keeps the leases alive until ctx ends, then leaves them to expire (a
// restarted process resumes them).
func (h *HostLeases) Run(ctx context.Context) {
	var wg sync.WaitGroup
	wg.Go(func() { h.key.run(ctx) })
	if h.hold != nil {
		wg.Go(func() { h.hold.run(ctx) })
	}
	wg.Wait()
}

// IDs are the current leases of the keys and of the holds; 0 for one not
// granted yet (or holds off). They answer at once, whatever etcd does.
func (h *HostLeases) IDs() (key, hold clientv3.LeaseID) {
	key = h.key.ID()
	if h.hold != nil {
		hold = h.hold.ID()
	}
	return key, hold
}

func (h *HostLeases) settings() LeasesConfig { return h.cfg }

func (h *HostLeases) acquire(ctx context.Context, hold bool, _ clientv3.LeaseID, _ []string) (clientv3.LeaseID, error) {
	if hold {
		return h.hold.acquire(ctx)
	}
	return h.key.acquire(ctx)
}

// renew keeps prev: the host's lease carries other registrations.
func (h *HostLeases) renew(_ context.Context, prev clientv3.LeaseID) (clientv3.LeaseID, error) {
	return prev, nil
}

func (h *HostLeases) watch(_ context.Context, hold bool, id clientv3.LeaseID) (leaseWatch, func(), error) {
	if id == 0 {
		return leaseWatch{}, func() {}, nil
	}
	if hold {
		return leaseWatch{lost: h.hold.lostOf(id), why: func() (string, string) {
			return "hold_lost", "the shared hold lease expired or etcd was unreachable"
		}}, func() {}, nil
	}
	return leaseWatch{lost: h.key.lostOf(id), why: func() (string, string) {
		return "lease_expired", fmt.Sprintf("shared lease %x expired or etcd unreachable for a TTL", int64(id))
	}}, func() {}, nil
}

// notFound drops a shared lease etcd no longer has, for every registration
// on it.
func (h *HostLeases) notFound(ctx context.Context, key, hold clientv3.LeaseID) bool {
	h.key.check(ctx, key)
	if h.hold != nil {
		h.hold.check(ctx, hold)
	}
	return false
}

// Release deletes rm.Key if it is still on rm.Lease (with rm.Value), and
// moves its slot's hold, if on rm.HoldLease, onto a lease of its own of
// TTL HoldWindow(TTL, SlotHold), which nobody keeps alive: the slot stays
// held for the hold window after this, as with leases of its own. A zero
// HoldLease (or holds off) leaves holds alone. Until it succeeds the key
// lives on with the host's lease.
func (h *HostLeases) Release(ctx context.Context, rm Removal) (Released, error) {
	if rm.Key == "" {
		return Released{}, nil // nothing claimed: nothing on the host's lease
	}
	k, err := ParseKey(h.cfg.Prefix, rm.Key)
	if err != nil {
		return Released{}, fmt.Errorf("release %s: %w", rm.Key, err)
	}
	ours := []clientv3.Cmp{clientv3.Compare(clientv3.LeaseValue(rm.Key), "=", rm.Lease)}
	if len(rm.Value) > 0 {
		ours = append(ours, clientv3.Compare(clientv3.Value(rm.Key), "=", string(rm.Value)))
	}
	cli := h.cfg.Client
	del := clientv3.OpDelete(rm.Key)
	if h.cfg.holdTTL() == 0 || rm.HoldLease == 0 {
		resp, err := cli.Txn(ctx).If(ours...).Then(del).Commit()
		if err != nil {
			return Released{}, fmt.Errorf("release %s: %w", rm.Key, err)
		}
		return Released{Deleted: resp.Succeeded}, nil
	}
	hk := k.HoldKey()
	heldByUs := []clientv3.Cmp{clientv3.Compare(clientv3.LeaseValue(hk), "=", rm.HoldLease)}
	holdOp := clientv3.OpDelete(hk)
	dropped := false
	g, err := cli.Grant(ctx, seconds(h.cfg.holdTTL()))
	switch {
	case err == nil:
		holdOp = clientv3.OpPut(hk, "", clientv3.WithLease(g.ID))
	case IsNoSpace(err):
		dropped = true
	default:
		return Released{}, fmt.Errorf("release %s: grant the hold's own lease: %w", rm.Key, err)
	}
	// The key is gone already (etcd lost the lease) or taken by another
	// registration: still release the hold.
	hold := clientv3.OpTxn(heldByUs, []clientv3.Op{holdOp}, nil)
	resp, err := cli.Txn(ctx).If(ours...).Then(del, hold).Else(hold).Commit()
	if err != nil {
		if g != nil {
			cli.Revoke(ctx, g.ID) // best effort: it would expire unused anyway
		}
		return Released{}, fmt.Errorf("release %s: %w", rm.Key, err)
	}
	held := resp.Responses[len(resp.Responses)-1].GetResponseTxn().GetSucceeded()
	return Released{Deleted: resp.Succeeded, HoldDropped: dropped && held}, nil
}

// sharedLease is one lease many registrations share: acquire returns it,
// granting one when there is none; run keeps it alive. When etcd loses it,
// the lost channel handed out with it is closed and the next acquire
// grants a new one.
type sharedLease struct {
	cli    *clientv3.Client
	ttlSec int64
	log    hclog.Logger

	grantMu sync.Mutex // one grant at a time, without holding mu over it

	mu      sync.Mutex
	id      clientv3.LeaseID
	lost    chan struct{} // closed when id is lost
	granted chan struct{} // closed when a new id is set, for run
}

func newSharedLease(cli *clientv3.Client, ttl time.Duration, resume clientv3.LeaseID, logger hclog.Logger) *sharedLease {
	if logger == nil {
		logger = hclog.NewNullLogger()
	}
	l := &sharedLease{cli: cli, ttlSec: seconds(ttl), log: logger, id: resume, lost: make(chan struct{}), granted: make(chan struct{})}
	if resume != 0 {
		close(l.granted)
	}
	return l
}

// ID is the current lease; 0 when there is none.
func (l *sharedLease) ID() clientv3.LeaseID {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.id
}

// lostOf is the channel closed when id is lost: closed already if id is
// not the current lease.
func (l *sharedLease) lostOf(id clientv3.LeaseID) <-chan struct{} {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.id == id {
		return l.lost
	}
	gone := make(chan struct{})
	close(gone)
	return gone
}

// acquire returns the current lease, granting one if there is none.
//
// The grant's round trip to etcd holds no lock that ID takes: with etcd
// down it lasts until ctx ends, and an agent answering its API must not
// wait for etcd (it records ID in its state file).
func (l *sharedLease) acquire(ctx context.Context) (clientv3.LeaseID, error) {
	l.grantMu.Lock()
	defer l.grantMu.Unlock()
	if id := l.ID(); id != 0 {
		return id, nil
	}
	resp, err := l.cli.Grant(ctx, l.ttlSec)
	if err != nil {
		return 0, fmt.Errorf("grant shared lease: %w", err)
	}
	// Nobody else changes id while it is 0 and grantMu is held: drop acts
	// on the current id only.
	l.mu.Lock()
	l.id = resp.ID
	close(l.granted)
	l.mu.Unlock()
	l.log.Info("shared lease granted", "lease", fmt.Sprintf("%x", int64(resp.ID)), "ttl_s", l.ttlSec)
	return resp.ID, nil
}

// drop marks id lost (if it is still the current lease): registrations on
// it claim again, on a lease the next acquire grants.
func (l *sharedLease) drop(id clientv3.LeaseID, why string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.id != id {
		return
	}
	l.log.Warn("shared lease lost; its registrations claim again", "lease", fmt.Sprintf("%x", int64(id)), "reason", why)
	l.id = 0
	close(l.lost)
	l.lost = make(chan struct{})
	l.granted = make(chan struct{})
}

// check asks etcd whether id is still alive and drops it if not; a
// registration calls it when etcd answers "lease not found".
func (l *sharedLease) check(ctx context.Context, id clientv3.LeaseID) {
	if id == 0 {
		return
	}
	resp, err := l.cli.TimeToLive(ctx, id)
	if err == nil && resp.TTL <= 0 {
		l.drop(id, "not found")
	}
}

// run keeps the lease alive until ctx ends. It owns no goroutine beyond the
// etcd client's keep-alive.
func (l *sharedLease) run(ctx context.Context) {
	for {
		l.mu.Lock()
		granted := l.granted
		l.mu.Unlock()
		select {
		case <-granted:
		case <-ctx.Done():
			return
		}
		id := l.ID()
		if id == 0 {
			continue
		}
		l.keepAlive(ctx, id)
		if ctx.Err() != nil {
			return
		}
	}
}

// keepAlive keeps id alive until it is lost or ctx ends.
func (l *sharedLease) keepAlive(ctx context.Context, id clientv3.LeaseID) {
	kctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ka, err := l.cli.KeepAlive(kctx, id)
	if err != nil {
		if ctx.Err() == nil {
			l.drop(id, err.Error())
		}
		return
	}
	for {
		select {
		case <-ctx.Done():
			return
		case resp, ok := <-ka:
			if ctx.Err() != nil {
				return
			}
			if !ok || resp == nil || resp.TTL <= 0 {
				l.drop(id, "expired, or etcd unreachable for a TTL")
				return
			}
		}
	}
}
