package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"

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
	Version int          `json:"version"`
	Workers []stateEntry `json:"workers"`
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
