package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/workersd/workersd/internal/atomicfile"
	"github.com/workersd/workersd/registrar"
)

// stateVersion changes when the file's meaning does; a file of another
// version is ignored (registrations then expire with their leases).
const stateVersion = 1

// stateFile is what the agent remembers across restarts: enough to tell
// whether each process still lives (pid and start time) and to adopt its
// registration (the exact value, the key and the lease).
type stateFile struct {
	Version int `json:"version"`
	// Workers are the live registrations, and those whose removal from
	// etcd is not confirmed yet (Removing).
	Workers []stateEntry `json:"workers"`
	// Unless Config.LeasePerWorker: the leases of every key and hold, resumed
	// by the next agent process.
	SharedLease     clientv3.LeaseID `json:"shared_lease,omitempty"`
	SharedHoldLease clientv3.LeaseID `json:"shared_hold_lease,omitempty"`
}

type stateEntry struct {
	ID         string           `json:"id"`
	PID        int              `json:"pid"`
	StartTicks uint64           `json:"start_ticks"`
	Job        string           `json:"job"`
	Value      registrar.Value  `json:"value"`
	Key        string           `json:"key,omitempty"`
	Lease      clientv3.LeaseID `json:"lease,omitempty"`
	// HoldLease keeps the slot held after the registration (registrar's
	// SlotHold); adopted with the key.
	HoldLease clientv3.LeaseID `json:"hold_lease,omitempty"`
	// Removing: the worker exited or asked to be removed, and etcd has not
	// confirmed the removal yet. The next agent process finishes it
	// instead of adopting the worker.
	Removing bool `json:"removing,omitempty"`
}

// stateEntry is what the state file says of e. a.mu is held.
func (e *entry) stateEntry() stateEntry {
	return stateEntry{
		ID: e.id, PID: e.pid, StartTicks: e.startTicks, Job: e.job, Value: e.value,
		Key: e.key, Lease: e.lease, HoldLease: e.holdLease,
	}
}

func readState(path string) (stateFile, error) {
	var s stateFile
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return stateFile{Version: stateVersion}, nil
	}
	// On any error no entry is returned: half a file, or one of another
	// version, is not trusted.
	if err != nil {
		return stateFile{}, fmt.Errorf("read state file: %w", err)
	}
	if err := json.Unmarshal(b, &s); err != nil {
		return stateFile{}, fmt.Errorf("state file %s: %w", path, err)
	}
	if s.Version != stateVersion {
		return stateFile{}, fmt.Errorf("state file %s: version %d, want %d", path, s.Version, stateVersion)
	}
	return s, nil
}

// writeState replaces the file atomically: a crash leaves the old or the new
// state, never a torn one, which the next start could not parse. Mode 0600:
// it names every worker of the host.
func writeState(path string, s stateFile) error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return fmt.Errorf("encode state: %w", err)
	}
	return atomicfile.Write(path, append(b, '\n'), 0o600)
}

// recoverState handles a state file that cannot be trusted (torn, another
// version, unreadable): it is kept aside for a person to look at, and the
// registrations of this host's live workers are rebuilt from etcd, whose
// values carry each worker's pid and start time. Overwriting it with an
// empty state instead would drop every live worker from Prometheus after
// the TTL, to come back on new slots.
func (a *Agent) recoverState(readErr error) stateFile {
	a.m.StateFileBad.Inc()
	aside := a.cfg.StateFile + ".bad-" + time.Now().UTC().Format("20060102T150405.000Z")
	if err := os.Rename(a.cfg.StateFile, aside); err != nil {
		a.log.Error("the state file cannot be used, nor kept aside", "error", readErr, "rename_error", err)
	} else {
		a.log.Error("the state file cannot be used; kept aside, rebuilding this host's registrations from etcd", "error", readErr, "kept_as", aside)
	}
	ctx, cancel := context.WithTimeout(a.ctx, a.cfg.TTL)
	defer cancel()
	resp, err := a.cfg.Client.Get(ctx, a.cfg.Prefix, clientv3.WithPrefix())
	if err != nil {
		// The leases then expire; the workers register again when they
		// next ask, on new slots.
		a.log.Error("cannot rebuild the registrations from etcd", "error", err)
		return stateFile{Version: stateVersion}
	}
	st := stateFile{Version: stateVersion}
	for _, kv := range resp.Kvs {
		reg, err := registrar.Decode(a.cfg.Prefix, kv.Key, kv.Value)
		if err != nil || reg.Host != a.cfg.Host || reg.PID <= 0 {
			continue
		}
		ticks, err := processStartTicks(reg.PID)
		if err != nil {
			continue
		}
		// The same process, not a later one with the same pid, and a
		// registration the agent made: it registers a process's start time
		// in whole seconds, a worker that registers itself the time of its
		// registration to the nanosecond.
		if started, err := processStartTime(ticks); err != nil || !started.Equal(reg.StartedAt) || reg.StartedAt.Nanosecond() != 0 {
			continue
		}
		st.Workers = append(st.Workers, stateEntry{
			ID: workerID(reg.PID, ticks), PID: reg.PID, StartTicks: ticks,
			Job: reg.Job, Value: reg.Value, Key: string(kv.Key), Lease: clientv3.LeaseID(kv.Lease),
		})
	}
	if !a.cfg.LeasePerWorker && len(st.Workers) > 0 {
		// An agent's workers share its lease: resume it. The hold lease
		// is granted anew and the holds put back on it.
		st.SharedLease = st.Workers[0].Lease
	}
	a.log.Info("rebuilt from etcd", "workers", len(st.Workers))
	return st
}

// recordLease notes e's current key and lease and persists them if they
// changed: a restarted agent adopts what the state file says. When it
// returns, the state file holds e's current key and lease (or a write
// failed and was counted): the note and its write happen under saveMu, so a
// caller that finds nothing changed waits for the write of whoever changed
// it. The API answers only after that.
func (a *Agent) recordLease(e *entry) {
	st := e.reg.State()
	if st.Key == "" || st.LeaseID == 0 {
		return
	}
	a.saveMu.Lock()
	defer a.saveMu.Unlock()
	a.mu.Lock()
	changed := a.byID[e.id] == e && (e.key != st.Key || e.lease != st.LeaseID || e.holdLease != st.HoldLeaseID)
	if changed {
		e.key, e.lease, e.holdLease = st.Key, st.LeaseID, st.HoldLeaseID
	}
	a.mu.Unlock()
	if changed {
		a.persistLocked()
	}
}

// persist writes the state file from the current registrations.
func (a *Agent) persist() {
	a.saveMu.Lock()
	defer a.saveMu.Unlock()
	a.persistLocked()
}

// persistLocked is persist with saveMu held.
func (a *Agent) persistLocked() {
	if a.cfg.StateFile == "" {
		return
	}
	a.mu.Lock()
	s := stateFile{Version: stateVersion, Workers: make([]stateEntry, 0, len(a.byID)+len(a.removals))}
	for _, e := range a.byID {
		s.Workers = append(s.Workers, e.stateEntry())
	}
	for _, rm := range a.removals {
		s.Workers = append(s.Workers, rm.se)
	}
	a.mu.Unlock()
	if a.host != nil {
		s.SharedLease, s.SharedHoldLease = a.host.IDs()
	}
	slices.SortFunc(s.Workers, func(x, y stateEntry) int {
		if x.PID != y.PID {
			return x.PID - y.PID
		}
		return strings.Compare(x.ID, y.ID)
	})
	if err := writeState(a.cfg.StateFile, s); err != nil {
		a.m.StateWriteFailures.Inc()
		a.log.Error("cannot write the state file; a restart would lose registrations", "error", err)
	}
}
