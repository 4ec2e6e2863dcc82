package sdfile

import (
	"os"
	"path/filepath"
	"testing"
)

func checkFile(t *testing.T, path, want string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != want {
		t.Errorf("%s holds %q, want %q", path, b, want)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != FileMode {
		t.Errorf("%s has mode %v, want %v", path, fi.Mode().Perm(), os.FileMode(FileMode))
	}
}

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
	checkFile(t, path, "[]\n")
	if written, err := w.Write([]byte("[1]\n")); !written || err != nil {
		t.Fatalf("changed: %v %v", written, err)
	}
	checkFile(t, path, "[1]\n")
}
