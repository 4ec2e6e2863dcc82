package sdfile

import (
	"bytes"
	"io"
	"os"

	"github.com/workersd/workersd/internal/atomicfile"
)

// FileMode is the mode of written files: Prometheus usually runs as another
// user than sdwriter and must be able to read them.
const FileMode = 0o644

// FileWriter writes one file with atomicfile.Replace (mode FileMode), only
// when the content changes: atomic for Prometheus, without fsync, because
// sdwriter writes the file again from etcd whenever it starts and finds
// the content different.
// It is not safe for concurrent use.
type FileWriter struct {
	path    string
	last    []byte  // content of the file, as far as we know
	lastOut *output // or this, when written by writeOutput
	known   bool
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
	if err := atomicfile.Replace(w.path, data, FileMode); err != nil {
		return false, err
	}
	w.last, w.lastOut, w.known = data, nil, true
	return true, nil
}

// writeOutput is Write of an output, copied from its Targets into the file
// rather than joined first.
func (w *FileWriter) writeOutput(o *output) (written bool, err error) {
	if !w.known {
		if f, ok := w.open(); ok {
			same := o.equalTo(f)
			f.Close()
			if same {
				w.lastOut, w.known = o, true
				return false, nil
			}
		}
	} else if (w.lastOut != nil && o.sameAs(w.lastOut)) || (w.last != nil && o.size == len(w.last) && bytes.Equal(o.Bytes(), w.last)) {
		return false, nil
	}
	if err := atomicfile.ReplaceFrom(w.path, o, FileMode); err != nil {
		return false, err
	}
	w.last, w.lastOut, w.known = nil, o, true
	return true, nil
}

// current reads the file if it exists with the right mode.
func (w *FileWriter) current() ([]byte, bool) {
	f, ok := w.open()
	if !ok {
		return nil, false
	}
	defer f.Close()
	b, err := io.ReadAll(f)
	return b, err == nil
}

// open opens the file if it exists with the right mode.
func (w *FileWriter) open() (*os.File, bool) {
	fi, err := os.Stat(w.path)
	if err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm() != FileMode {
		return nil, false
	}
	f, err := os.Open(w.path)
	return f, err == nil
}
