package registrar

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// SharedLease is one etcd lease that many registrations of one host share
// (Config.Lease): a host agent keeps one lease alive for all its workers
// instead of one per worker, so etcd sees one keep-alive stream per host
// (two with slot holds) whatever the number of workers. A registration on
// a shared lease ends by deleting its key (Deregister) rather than by
// revoking; the death of the process that keeps the lease alive expires
// every key on it after the TTL, as with a lease each.
//
// Run keeps the lease alive; Acquire returns it, granting one when there
// is none. When etcd loses the lease (unreachable for a TTL, wiped), Lost
// channels handed out with it are closed and the next Acquire grants a new
// one: the registrations on it claim again.
type SharedLease struct {
	cli    *clientv3.Client
	ttlSec int64
	log    hclog.Logger

	grantMu sync.Mutex // one grant at a time, without holding mu over it

	mu      sync.Mutex
	id      clientv3.LeaseID
	lost    chan struct{} // closed when id is lost
	granted chan struct{} // closed when a new id is set, for Run
}

// NewSharedLease returns a shared lease of the given TTL. resume, when not
// 0, is a lease granted by an earlier process (a restarted agent): it is
// kept alive if etcd still has it. Logger may be nil.
func NewSharedLease(cli *clientv3.Client, ttl time.Duration, resume clientv3.LeaseID, logger hclog.Logger) *SharedLease {
	if logger == nil {
		logger = hclog.NewNullLogger()
	}
	l := &SharedLease{cli: cli, ttlSec: seconds(ttl), log: logger, id: resume, lost: make(chan struct{}), granted: make(chan struct{})}
	if resume != 0 {
		close(l.granted)
	}
	return l
}

// ID is the current lease; 0 when there is none.
func (l *SharedLease) ID() clientv3.LeaseID {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.id
}

// Acquire returns the current lease, granting one if there is none, and a
// channel closed when that lease is lost.
//
// The grant's round trip to etcd holds no lock that ID takes: with etcd
// down it lasts until ctx ends, and an agent answering its API must not
// wait for etcd (it records ID in its state file).
func (l *SharedLease) Acquire(ctx context.Context) (clientv3.LeaseID, <-chan struct{}, error) {
	l.grantMu.Lock()
	defer l.grantMu.Unlock()
	l.mu.Lock()
	id, lost := l.id, l.lost
	l.mu.Unlock()
	if id != 0 {
		return id, lost, nil
	}
	resp, err := l.cli.Grant(ctx, l.ttlSec)
	if err != nil {
		return 0, nil, fmt.Errorf("grant shared lease: %w", err)
	}
	// Nobody else changes id while it is 0 and grantMu is held: drop acts
	// on the current id only.
	l.mu.Lock()
	l.id, lost = resp.ID, l.lost
	close(l.granted)
	l.mu.Unlock()
	l.log.Info("shared lease granted", "lease", fmt.Sprintf("%x", int64(resp.ID)), "ttl_s", l.ttlSec)
	return resp.ID, lost, nil
}

// drop marks id lost (if it is still the current lease): registrations on
// it claim again, on a lease the next Acquire grants.
func (l *SharedLease) drop(id clientv3.LeaseID, why string) {
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

// Check asks etcd whether id is still alive and drops it if not; a
// registration calls it when etcd answers "lease not found".
func (l *SharedLease) Check(ctx context.Context, id clientv3.LeaseID) {
	if id == 0 {
		return
	}
	resp, err := l.cli.TimeToLive(ctx, id)
	if err == nil && resp.TTL <= 0 {
		l.drop(id, "not found")
	}
}

// Run keeps the lease alive until ctx ends; it leaves the lease to expire
// then (a restarted process resumes it). It owns no goroutine beyond the
// etcd client's keep-alive.
func (l *SharedLease) Run(ctx context.Context) {
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
func (l *SharedLease) keepAlive(ctx context.Context, id clientv3.LeaseID) {
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
