package sdfile

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/workersd/workersd/internal/testing/filetest"
)

func TestFileWriterWritesOnlyChanges(t *testing.T) {
	path := filepath.Join(t.TempDir(), "t.json")
	w := NewFileWriter(path)
	if written, err := w.Write([]byte("[]\n")); !written || err != nil {
		t.Fatalf("first write: %v %v", written, err)
	}
	before, _ := os.Stat(path)
	if written, err := w.Write([]byte("[]\n")); written || err != nil {
		t.Fatalf("same bytes: written=%v err=%v", written, err)
	}
	// A new writer (a restarted sdwriter) finds the file up to date.
	if written, err := NewFileWriter(path).Write([]byte("[]\n")); written || err != nil {
		t.Fatalf("restart, same bytes: written=%v err=%v", written, err)
	}
	after, _ := os.Stat(path)
	if !os.SameFile(before, after) {
		t.Error("unchanged content was written again")
	}
	// A file with the wrong mode is rewritten even with the same content.
	os.Chmod(path, 0o600)
	if written, err := NewFileWriter(path).Write([]byte("[]\n")); !written || err != nil {
		t.Fatalf("wrong mode: written=%v err=%v", written, err)
	}
	filetest.Check(t, path, "[]\n", FileMode)
	if written, err := w.Write([]byte("[1]\n")); !written || err != nil {
		t.Fatalf("changed: %v %v", written, err)
	}
	filetest.Check(t, path, "[1]\n", FileMode)
}
