// Package atomicfile replaces files so that readers and crashes see the old
// content or the new, never a mix or an empty file. It is the one home of
// that policy: sdwriter's file_sd output and the agent's state file both
// use it.
package atomicfile

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
)

// TempDir is the directory, beside the file written, where Write writes
// its temporary file. Not the file's own directory: Prometheus' file_sd
// watches that directory and reads every file of its glob again on each
// event there, even for a file that does not match the glob; a temporary
// file beside the output gave three or four such events (create, write,
// rename) per write, so Prometheus parsed a 30 MB output up to four times
// per write. Only the rename into place is seen now.
const TempDir = ".atomicfile"

// Write replaces the file at path by data with the given mode. It writes a
// temporary file in TempDir under the file's directory (same file system,
// so the rename is atomic; a glob such as *.json never matches it), fsyncs
// it, sets mode (not subject to the umask), renames it over path and fsyncs
// the directory. The directories are created (0755) when missing. On error
// before the rename the previous file is left as it was and the temporary
// file is removed; an error after it is a *NotDurableError.
//
// The first Write (or Replace) of a process into a directory also removes
// the temporaries that processes which died mid-write left there (Clean),
// so crashes do not pile them up; those of writers still at work, in this
// process or another, are left alone.
//
// It replaces only a regular file: a directory, device, socket, FIFO or
// symbolic link at path is an error (callers that follow links resolve them
// first with Resolve), so a mistaken path never replaces /dev/null.
func Write(path string, data []byte, mode os.FileMode) error {
	return write(path, bytes.NewReader(data), mode, true)
}

// Replace is Write without the fsyncs: readers still see the old content
// or the new, never a mix, but a machine crash may leave the file empty or
// old. For files derived from elsewhere and written again at start, such
// as sdwriter's output (from etcd): each fsync of a large output is a
// synchronous disk write of all of it, and a millisecond or more of every
// change's latency.
func Replace(path string, data []byte, mode os.FileMode) error {
	return write(path, bytes.NewReader(data), mode, false)
}

// ReplaceFrom is Replace of what src writes: a large content made of parts
// is written without first being joined into one buffer.
func ReplaceFrom(path string, src io.WriterTo, mode os.FileMode) error {
	return write(path, src, mode, false)
}

func write(path string, src io.WriterTo, mode os.FileMode, durable bool) (err error) {
	dir, name := filepath.Split(path)
	if name == "" {
		return fmt.Errorf("write %q: not a file name", path)
	}
	if err := replaceable(path); err != nil {
		return err
	}
	if dir == "" {
		dir = "."
	}
	tmpDir := filepath.Join(dir, TempDir)
	if err := os.MkdirAll(tmpDir, 0o755); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	cleanOnce(dir)
	f, unlock, err := createTemp(tmpDir, name+tmpInfix+"*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	// The lock marks the temporary as a live writer's until it is renamed
	// or removed: it outlives f's Close.
	defer unlock()
	tmp := f.Name()
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if _, err := src.WriteTo(f); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if durable {
		if err := f.Sync(); err != nil {
			return fmt.Errorf("write %s: sync: %w", path, err)
		}
	}
	// CreateTemp uses 0600; fchmod is not subject to the umask.
	if err := f.Chmod(mode); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if testHookBeforeRename != nil {
		testHookBeforeRename()
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if !durable {
		return nil
	}
	if err := syncDir(dir); err != nil {
		return &NotDurableError{err}
	}
	return nil
}

// tmpInfix is in the name of every temporary: <file name>.tmp-<random>.
const tmpInfix = ".tmp-"

// testHookBeforeRename, when set by a test, runs after the temporary is
// written and closed, before it is renamed into place.
var testHookBeforeRename func()

// cleaned holds the directories this process has cleaned of stale
// temporaries (see cleanOnce).
var cleaned sync.Map

// cleanOnce cleans dir's TempDir the first time this process writes into
// dir. A failure is not the write's: the next start tries again.
func cleanOnce(dir string) {
	key := dir
	if abs, err := filepath.Abs(dir); err == nil {
		key = abs
	}
	if _, done := cleaned.LoadOrStore(key, true); !done {
		Clean(dir)
	}
}

// Clean removes from dir's TempDir the temporaries that no live writer
// owns: a writer holds an exclusive lock (flock) on its temporary from its
// creation until it is renamed into place or removed, and the kernel drops
// the lock when the process dies, however it dies (kill -9, OOM). So a
// temporary whose lock Clean can take was left by a dead process, and one
// being written, by this process or any other on the host, is kept.
// Write cleans each directory the first time a process writes into it;
// call Clean for a directory written rarely. It returns the names removed.
// On file systems without flock (and on platforms other than Unix) it
// removes nothing: it cannot tell a live writer from a dead one there.
func Clean(dir string) ([]string, error) {
	tmpDir := filepath.Join(dir, TempDir)
	ents, err := os.ReadDir(tmpDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("clean %s: %w", tmpDir, err)
	}
	var removed []string
	var errs []error
	for _, e := range ents {
		if !e.Type().IsRegular() || !strings.Contains(e.Name(), tmpInfix) {
			continue
		}
		ok, err := removeIfStale(filepath.Join(tmpDir, e.Name()))
		if err != nil {
			errs = append(errs, err)
		}
		if ok {
			removed = append(removed, e.Name())
		}
	}
	return removed, errors.Join(errs...)
}

// Temporaries lists the temporary files Write left in dir: none, unless
// a process died between creating one and renaming it, or one is writing.
func Temporaries(dir string) []string {
	ents, _ := os.ReadDir(filepath.Join(dir, TempDir))
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

// replaceable checks that path is a regular file or nothing.
func replaceable(path string) error {
	fi, err := os.Lstat(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return nil
	case err != nil:
		return fmt.Errorf("write %s: %w", path, err)
	case !fi.Mode().IsRegular():
		return fmt.Errorf("write %s: it is %s, not a regular file; refusing to replace it", path, kind(fi.Mode()))
	}
	return nil
}

func kind(m os.FileMode) string {
	switch {
	case m&os.ModeSymlink != 0:
		return "a symbolic link"
	case m.IsDir():
		return "a directory"
	case m&os.ModeDevice != 0:
		return "a device"
	case m&os.ModeNamedPipe != 0:
		return "a FIFO"
	case m&os.ModeSocket != 0:
		return "a socket"
	}
	return "a special file (" + m.Type().String() + ")"
}

// Resolve returns the path Write should replace for path: path itself, or,
// when it is a symbolic link, the file it points to (which must exist), so
// the link stays and its target is updated. Anything else than a regular
// file (or nothing) at the end is an error.
func Resolve(path string) (string, error) {
	fi, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return path, nil
	}
	if err != nil {
		return "", err
	}
	if fi.Mode()&os.ModeSymlink != 0 {
		target, err := filepath.EvalSymlinks(path)
		if err != nil {
			return "", fmt.Errorf("%s is a symbolic link that cannot be followed: %w", path, err)
		}
		path = target
	}
	if err := replaceable(path); err != nil {
		return "", err
	}
	return path, nil
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
