package agent

// The end of a registration: a worker's exit or an API call takes it,
// its removal from etcd is tried within RemoveWait, then retried in the
// background and kept in the state file until etcd confirms it.

import (
	"context"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/workersd/workersd/internal/backoff"
	"github.com/workersd/workersd/registrar"
)

// releaseBackoff paces the retries of a release on the shared lease.
var releaseBackoff = backoff.Policy{Base: 100 * time.Millisecond, Max: 5 * time.Second}

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
		a.m.HoldsDropped.Inc()
		a.log.Warn("etcd is out of space: the slot's hold was deleted with the key; the slot may be reused before its hold would have ended", "key", key)
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
	a.m.Workers.Set(float64(len(a.byID)))
	a.m.Deregistrations.WithLabelValues(reason).Inc()
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

// Deregister removes the registration of a process given by pid or ID.
// The answer's State is "deregistered" when the key is gone from etcd, or
// "removal_pending" when etcd did not confirm within RemoveWait: the agent
// then goes on trying, and a restarted agent finishes the removal instead
// of adopting the worker. Errors are *Error.
func (a *Agent) Deregister(ctx context.Context, idOrPID string) (Worker, error) {
	// An ID starts with the pid too: both are the agent's pids.
	pid, _ := strconv.Atoi(strings.SplitN(idOrPID, "-", 2)[0])
	if err := callerFrom(ctx).samePIDNamespace(pid); err != nil {
		return Worker{}, err
	}
	a.opMu.Lock()
	e := a.lookup(idOrPID)
	if e == nil {
		a.opMu.Unlock()
		return Worker{}, apiErr(http.StatusNotFound, "pid", "no worker %q is registered", idOrPID)
	}
	if caller := callerFrom(ctx); !caller.mayActFor(e.uid) {
		a.opMu.Unlock()
		a.m.Refusals.WithLabelValues("foreign_process").Inc()
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
