// Package atomicfile replaces files so that readers and crashes see the old
// content or the new, never a mix or an empty file. It is the one home of
// that policy: sdwriter's file_sd output and the agent's state file both
// use it.
package atomicfile

import (
	"fmt"
	"os"
	"path/filepath"
)

// Write replaces the file at path by data with the given mode. It writes a
// temporary file in the same directory, named ".<name>.tmp-<random>" so that
// a glob such as *.json never matches it, fsyncs it, sets mode (not subject
// to the umask), renames it over path and fsyncs the directory. The
// directory is created (0755) when missing. On error before the rename the
// previous file is left as it was and the temporary file is removed; an
// error after it is a *NotDurableError.
func Write(path string, data []byte, mode os.FileMode) (err error) {
	dir, name := filepath.Split(path)
	if name == "" {
		return fmt.Errorf("write %q: not a file name", path)
	}
	if dir == "" {
		dir = "."
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	f, err := os.CreateTemp(dir, "."+name+".tmp-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if _, err := f.Write(data); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("write %s: sync: %w", path, err)
	}
	// CreateTemp uses 0600; fchmod is not subject to the umask.
	if err := f.Chmod(mode); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := syncDir(dir); err != nil {
		return &NotDurableError{err}
	}
	return nil
}

// NotDurableError is a failure after the new file took the old one's place:
// readers see the new content, only its survival of a crash is in doubt.
type NotDurableError struct{ Err error }

func (e *NotDurableError) Error() string { return e.Err.Error() }
func (e *NotDurableError) Unwrap() error { return e.Err }

// syncDir makes a rename in dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	return nil
}
