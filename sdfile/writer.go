package sdfile

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// FileMode is the mode of written files: Prometheus usually runs as another
// user than sdwriter and must be able to read them.
const FileMode = 0o644

// WriteFile replaces the file at path by data atomically: readers see the
// old content or the new, never a mix or an empty file. It writes a
// temporary file in the same directory, named ".<name>.tmp-<random>" so that
// a file_sd glob such as *.json never matches it, fsyncs it, sets FileMode,
// renames it over path and fsyncs the directory. The directory is created
// when missing. On error the previous file is left as it was and the
// temporary file is removed.
func WriteFile(path string, data []byte) (err error) {
	dir, name := filepath.Split(path)
	if name == "" {
		return fmt.Errorf("write %q: not a file name", path)
	}
	if dir == "" {
		dir = "."
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, "."+name+".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if _, err := f.Write(data); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	// CreateTemp uses 0600; fchmod is not subject to the umask.
	if err := f.Chmod(FileMode); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	if err := syncDir(dir); err != nil {
		return &renamedError{err}
	}
	return nil
}

// renamedError is a failure after the new file took the old one's place:
// the content is current, only its durability is in doubt.
type renamedError struct{ error }

func (e *renamedError) Unwrap() error { return e.error }

// syncDir makes a rename in dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
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

// FileWriter writes one file with WriteFile, only when the content changes.
// It is not safe for concurrent use.
type FileWriter struct {
	path  string
	last  []byte // content of the file, as far as we know
	known bool
}

// NewFileWriter returns a writer for path. Nothing is written yet.
func NewFileWriter(path string) *FileWriter { return &FileWriter{path: path} }

// Path is the file written.
func (w *FileWriter) Path() string { return w.path }

// Write makes the file hold data. When it already does (including a file
// left by a previous run, with FileMode), nothing is written and written is
// false. data must not be modified afterwards.
func (w *FileWriter) Write(data []byte) (written bool, err error) {
	if !w.known {
		w.last, w.known = w.current()
	}
	if w.known && bytes.Equal(w.last, data) {
		return false, nil
	}
	if err := WriteFile(w.path, data); err != nil {
		var renamed *renamedError
		if errors.As(err, &renamed) {
			w.last, w.known = data, true
			return true, err
		}
		return false, err
	}
	w.last, w.known = data, true
	return true, nil
}

// current reads the file if it exists with the right mode.
func (w *FileWriter) current() ([]byte, bool) {
	fi, err := os.Stat(w.path)
	if err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm() != FileMode {
		return nil, false
	}
	b, err := os.ReadFile(w.path)
	return b, err == nil
}
