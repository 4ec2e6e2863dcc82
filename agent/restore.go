package agent

// Adoption of what an earlier agent process registered.

import (
	"context"

	"github.com/workersd/workersd/registrar"
)

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
		a.m.Deregistrations.WithLabelValues("exited").Inc()
		a.dropLater(se)
		return
	}
	uid, err := processOwner(se.PID)
	if err != nil {
		log.Info("not adopting the registration: its process is gone or cannot be a worker; removing it", "error", err)
		a.m.Deregistrations.WithLabelValues("exited").Inc()
		a.dropLater(se)
		return
	}
	proc, err := openProc(se.PID, se.StartTicks, a.cfg.PollInterval, !a.cfg.DisablePidfd)
	if err != nil {
		log.Info("worker exited while the agent was down; removing its registration", "error", err)
		a.m.Deregistrations.WithLabelValues("exited").Inc()
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
	a.m.Restored.Inc()
	log.Info("adopted the registration of a live worker", "watch", e.watchMethod())
}

// dropLater ends, in the background, a registration of an earlier agent
// process that is not adopted (its process is gone, or its removal was
// pending), as the leases release one. It stays in the state file until
// done.
func (a *Agent) dropLater(se stateEntry) {
	if se.Lease == 0 || se.Key == "" {
		return // nothing known to remove; the reconciler finds any key left
	}
	se.Removing = true
	var value []byte
	if b, err := se.Value.Encode(); err == nil {
		value = b
	}
	rm := &removal{se: se}
	rm.do = func(ctx context.Context) error {
		res, err := a.leases.Release(ctx, registrar.Removal{Key: se.Key, Value: value, Lease: se.Lease, HoldLease: se.HoldLease})
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
