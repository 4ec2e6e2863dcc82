package agent

// Registration: a request checked (trust.go), one registrar per worker,
// and the API's views of them.

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strconv"

	"github.com/workersd/workersd/registrar"
)

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
	w, err := a.admit(ctx, req)
	if err != nil {
		return nil, false, err
	}
	a.opMu.Lock()
	defer a.opMu.Unlock()
	old, err := a.checkLimits(req, w)
	if err != nil || (old != nil && old.startTicks == w.ticks) {
		return old, false, err
	}
	if old != nil {
		// The pid was reused before the watcher noticed the old exit.
		// Removed in the background: opMu must not wait for etcd.
		if a.take(old, "exited") {
			a.wg.Go(func() { a.revoke(old, false) })
		}
	}
	e, err := a.newEntry(req, w)
	if err != nil {
		return nil, false, err
	}
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		e.proc.close()
		return nil, false, apiErr(http.StatusServiceUnavailable, "", "the agent is stopping")
	}
	a.add(e)
	a.mu.Unlock()
	a.m.Registrations.Inc()
	a.persist()
	a.log.Info("worker registered", "pid", e.pid, "job", e.job, "address", w.value.Address, "watch", e.watchMethod())
	return e, true, nil
}

// checkLimits refuses a request the agent's state forbids: the agent is
// not running, another worker has the address, the user has too many
// registrations, the pid is registered otherwise. It returns the entry the
// pid has already, if any: the one to answer with when it is the same
// process (same start), one to replace when the pid was reused. opMu is
// held.
func (a *Agent) checkLimits(req Request, w admitted) (*entry, error) {
	a.mu.Lock()
	if !a.started || a.closed {
		a.mu.Unlock()
		return nil, apiErr(http.StatusServiceUnavailable, "", "the agent is not running")
	}
	old := a.byPID[req.PID]
	owned, sameAddr := 0, (*entry)(nil)
	for _, e := range a.byID {
		if e.uid == w.uid {
			owned++
		}
		if e.pid != req.PID && e.value.Address == w.value.Address {
			sameAddr = e
		}
	}
	a.mu.Unlock()
	switch {
	case sameAddr != nil:
		a.m.Refusals.WithLabelValues("address_taken").Inc()
		return nil, apiErr(http.StatusConflict, "address", "%s is already registered by pid %d (job %q)", w.value.Address, sameAddr.pid, sameAddr.job)
	case old == nil && owned >= a.cfg.MaxPerUser:
		a.m.Refusals.WithLabelValues("user_limit").Inc()
		return nil, apiErr(http.StatusTooManyRequests, "pid", "uid %d has %d live registrations, at most %d", w.uid, owned, a.cfg.MaxPerUser)
	case old != nil && old.startTicks == w.ticks && (old.job != req.Job || !sameValue(old.value, w.value)):
		return nil, apiErr(http.StatusConflict, "pid",
			"pid %d is already registered (job %q, address %s); DELETE /v1/workers/%d first", req.PID, old.job, old.value.Address, req.PID)
	}
	return old, nil
}

// newEntry opens the process of an admitted request and makes its
// registrar; nothing is registered yet.
func (a *Agent) newEntry(req Request, w admitted) (*entry, error) {
	proc, err := openProc(req.PID, w.ticks, a.cfg.PollInterval, !a.cfg.DisablePidfd)
	if errors.Is(err, errNotAlive) {
		return nil, apiErr(http.StatusUnprocessableEntity, "pid", "pid %d is not a running process", req.PID)
	}
	if err != nil {
		return nil, apiErr(http.StatusInternalServerError, "pid", "watch pid %d: %v", req.PID, err)
	}
	reg, err := a.newRegistrar(req.Job, w.value, registrar.Resume{})
	if err != nil {
		proc.close()
		return nil, fromFieldErr(err)
	}
	return &entry{
		id:  workerID(req.PID, w.ticks),
		pid: req.PID, uid: w.uid, startTicks: w.ticks, job: req.Job, value: w.value, encoded: reg.Removal().Value, reg: reg, proc: proc,
	}, nil
}

func (a *Agent) newRegistrar(job string, v registrar.Value, resume registrar.Resume) (*registrar.Registrar, error) {
	return registrar.New(registrar.Config{
		Client:   a.cfg.Client,
		Prefix:   a.cfg.Prefix,
		Job:      job,
		Host:     a.cfg.Host,
		Value:    v,
		TTL:      a.cfg.TTL,
		SlotHold: a.cfg.SlotHold,
		Metrics:  a.cfg.RegistrarMetrics,
		Logger:   a.log.Named("registrar").With("pid", v.PID),
		Resume:   resume,
		Leases:   a.leases,
	})
}

// add starts the registration and the watcher of e. a.mu is held.
func (a *Agent) add(e *entry) {
	ctx, cancel := context.WithCancel(a.ctx)
	e.cancel = cancel
	a.byID[e.id] = e
	a.byPID[e.pid] = e
	a.m.Workers.Set(float64(len(a.byID)))
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
