package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	clientv3 "go.etcd.io/etcd/client/v3"

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
// state, never a torn one, which the next start could not parse.
func writeState(path string, s stateFile) (err error) {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return fmt.Errorf("encode state: %w", err)
	}
	b = append(b, '\n')
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("write state file: %w", err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	if err := f.Chmod(0o600); err != nil {
		return fmt.Errorf("write state file: %w", err)
	}
	if _, err := f.Write(b); err != nil {
		return fmt.Errorf("write state file: %w", err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("write state file: sync: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write state file: %w", err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return fmt.Errorf("write state file: %w", err)
	}
	// The rename is durable only once the directory is.
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}
