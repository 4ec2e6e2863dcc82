package agent

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/workersd/workersd/registrar"
)

// startReconciler starts looking for orphans on the host lease: at once
// (what an earlier agent process left), then every ReconcileInterval.
func (a *Agent) startReconciler() {
	if a.host == nil || a.cfg.ReconcileInterval < 0 {
		return
	}
	a.wg.Go(func() {
		for {
			ctx, cancel := context.WithTimeout(a.ctx, a.cfg.TTL)
			if err := a.reconcile(ctx); err != nil && a.ctx.Err() == nil {
				a.log.Warn("cannot look for registrations left on the host lease; trying again later", "error", err)
			}
			cancel()
			select {
			case <-time.After(a.cfg.ReconcileInterval):
			case <-a.ctx.Done():
				return
			}
		}
	})
}

// reconcile removes the keys on the host lease that hold no live
// registration, and the holds on the host hold lease whose slot no live
// registration has. A key on the host lease lives as long as the agent:
// one left by a removal that could not know its key would be a target for
// ever. It is the net under every removal; a removal knows its key, so
// it finds nothing but after an earlier process's crash.
//
// A live registration may be claiming a key right now, before its state
// names it: such a key holds the registration's value, which is what
// tells it from an orphan. A key of a registration being removed is an
// orphan here too; removing it twice does no harm. A registration's slot
// is live as long as the registration is, by its current key or the one
// last recorded (adopted after a restart, claiming its slot again).
func (a *Agent) reconcile(ctx context.Context) error {
	lease, hold := a.host.IDs()
	if lease == 0 {
		return nil
	}
	keys, err := a.keysOn(ctx, lease)
	if err != nil {
		return err
	}
	var holds []string
	if hold != 0 {
		if holds, err = a.keysOn(ctx, hold); err != nil {
			return err
		}
	}
	// After listing: a registration added later claims after this, so
	// any key listed that is not a live one's was there before.
	o := orphans{a: a, lease: lease, hold: hold, live: a.liveKeys(), done: map[string]bool{}}
	for _, k := range keys {
		if _, err := registrar.ParseKey(a.cfg.Prefix, k); err != nil {
			continue // not a registration's key
		}
		if err := o.release(ctx, k, "key"); err != nil {
			return err
		}
	}
	for _, hk := range holds {
		k, err := registrar.ParseHoldKey(a.cfg.Prefix, hk)
		if err != nil {
			continue
		}
		if err := o.release(ctx, k.String(), "hold"); err != nil {
			return err
		}
	}
	return nil
}

// liveSet is what the live registrations hold: their keys, and the values
// they register, which tell a key being claimed right now from an orphan.
type liveSet struct {
	keys   map[string]bool
	values [][]byte
}

// liveKeys is the live registrations' liveSet.
func (a *Agent) liveKeys() liveSet {
	a.mu.Lock()
	defer a.mu.Unlock()
	live := liveSet{keys: make(map[string]bool, len(a.byID)), values: make([][]byte, 0, len(a.byID))}
	for _, e := range a.byID {
		// The recorded key too: an adopted registration claims its slot
		// again (its lease expired while the agent was away), and its
		// slot's hold, still on the hold lease, is what keeps that slot
		// for it meanwhile.
		live.keys[e.key] = true
		live.keys[e.reg.State().Key] = true
		live.values = append(live.values, e.encoded)
	}
	delete(live.keys, "")
	return live
}

// orphans releases, once each, the keys and holds one reconcile finds on
// the host's leases that no live registration owns.
type orphans struct {
	a           *Agent
	lease, hold clientv3.LeaseID
	live        liveSet
	done        map[string]bool
}

// owned reads key and says whether it holds a live registration.
func (o *orphans) owned(ctx context.Context, key string) (bool, error) {
	if o.live.keys[key] {
		return true, nil
	}
	resp, err := o.a.cfg.Client.Get(ctx, key)
	if err != nil {
		return false, fmt.Errorf("read %s: %w", key, err)
	}
	return len(resp.Kvs) == 1 && slices.ContainsFunc(o.live.values, func(v []byte) bool {
		return bytes.Equal(v, resp.Kvs[0].Value)
	}), nil
}

// release removes key (and its slot's hold) unless a live registration
// owns it; kind says how it was found, for the count.
func (o *orphans) release(ctx context.Context, key, kind string) error {
	if o.done[key] {
		return nil
	}
	o.done[key] = true
	if ok, err := o.owned(ctx, key); err != nil || ok {
		return err
	}
	// Value left empty: the key holds no live registration, whatever it
	// holds; the release still requires it to be on the host lease.
	res, err := o.a.host.Release(ctx, registrar.Removal{Key: key, Lease: o.lease, HoldLease: o.hold})
	if err != nil {
		return err
	}
	o.a.noteHoldDropped(res, key)
	if res.Deleted {
		kind = "key"
	}
	o.a.m.OrphansRemoved.WithLabelValues(kind).Inc()
	o.a.log.Warn("removed a registration no live worker owns from the host lease", "key", key, "key_deleted", res.Deleted)
	return nil
}

// keysOn lists the keys on lease under the agent's prefixes.
func (a *Agent) keysOn(ctx context.Context, lease clientv3.LeaseID) ([]string, error) {
	resp, err := a.cfg.Client.TimeToLive(ctx, lease, clientv3.WithAttachedKeys())
	if err != nil {
		return nil, fmt.Errorf("keys on lease %x: %w", int64(lease), err)
	}
	keys := make([]string, 0, len(resp.Keys))
	hp := registrar.HoldPrefix(a.cfg.Prefix)
	for _, k := range resp.Keys {
		if s := string(k); strings.HasPrefix(s, a.cfg.Prefix) || strings.HasPrefix(s, hp) {
			keys = append(keys, s)
		}
	}
	return keys, nil
}
