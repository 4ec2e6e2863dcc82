package agent

// The agent's life: Start (restore, the host's leases, the reconciler)
// and Close (detach, never remove).

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"

	"github.com/workersd/workersd/internal/lockfile"
	"github.com/workersd/workersd/registrar"
	clientv3 "go.etcd.io/etcd/client/v3"
)

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

	st, err := a.openState()
	if err == nil {
		err = a.startLeases(st.SharedLease, st.SharedHoldLease)
	}
	if err != nil {
		a.mu.Lock()
		a.closed = true // a failed start serves nothing
		a.mu.Unlock()
		a.cancel()
		if a.releaseLock != nil {
			a.releaseLock()
		}
		return fmt.Errorf("agent: %w", err)
	}
	for _, se := range st.Workers {
		a.restore(se)
	}
	a.persist()
	a.startReconciler()
	return nil
}

// openState locks the state file and reads it; without one, the state is
// empty.
func (a *Agent) openState() (stateFile, error) {
	if a.cfg.StateFile == "" {
		return stateFile{Version: stateVersion}, nil
	}
	// Two agents on one state file would each remove what the other
	// registered.
	release, err := lockfile.Acquire(a.cfg.StateFile + ".lock")
	if err != nil {
		return stateFile{}, fmt.Errorf("state file: %w (another agent?)", err)
	}
	a.releaseLock = release
	st, err := readState(a.cfg.StateFile)
	if err != nil {
		st = a.recoverState(err)
	}
	return st, nil
}

// startLeases sets the leases every registration is on and, when they
// are the host's (unless Config.LeasePerWorker), starts keeping them
// alive, resuming those of an earlier agent process.
func (a *Agent) startLeases(lease, hold clientv3.LeaseID) error {
	lc := registrar.LeasesConfig{
		Client: a.cfg.Client, Prefix: a.cfg.Prefix, TTL: a.cfg.TTL, SlotHold: a.cfg.SlotHold, Logger: a.log,
	}
	if a.cfg.LeasePerWorker {
		leases, err := registrar.OwnLeases(lc)
		a.leases = leases
		return err
	}
	host, err := registrar.NewHostLeases(lc, lease, hold)
	if err != nil {
		return err
	}
	a.leases, a.host = host, host
	a.wg.Go(func() { host.Run(a.ctx) })
	return nil
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
