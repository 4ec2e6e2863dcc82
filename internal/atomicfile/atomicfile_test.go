//go:build unix

package atomicfile

import (
	"bytes"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

func TestWrite(t *testing.T) {
	old := syscall.Umask(0o077) // the mode must not depend on the umask
	defer syscall.Umask(old)

	dir := filepath.Join(t.TempDir(), "created", "on", "demand")
	path := filepath.Join(dir, "targets.json")
	if err := Write(path, []byte("[]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := Write(path, []byte("[1]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	checkFile(t, path, "[1]\n")
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Errorf("directory holds %v, want only the file", ents)
	}
	if err := Write(dir+"/", nil, 0o644); err == nil {
		t.Error("WriteFile to a directory name succeeded")
	}
}

// The temporary file must never match the glob Prometheus watches.
func TestTempFileNameDoesNotMatchJSONGlob(t *testing.T) {
	dir := t.TempDir()
	f, err := os.CreateTemp(dir, ".targets.json.tmp-*") // the pattern Write uses
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	for _, glob := range []string{"*.json", "*.yml", "*.yaml", "targets*.json"} {
		if m, _ := filepath.Glob(filepath.Join(dir, glob)); len(m) != 0 {
			t.Errorf("%s matches %v", glob, m)
		}
	}
}

func TestWriteFailureLeavesPrevious(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "targets.json")
	if err := Write(path, []byte("[]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Run("disk full", func(t *testing.T) {
		limitFileSize(t, 1024)
		if err := Write(path, bytes.Repeat([]byte("x"), 4096), 0o644); err == nil {
			t.Fatal("write beyond the file size limit succeeded")
		}
	})
	t.Run("read-only directory", func(t *testing.T) {
		if os.Geteuid() == 0 {
			t.Skip("root writes to read-only directories")
		}
		os.Chmod(dir, 0o555)
		defer os.Chmod(dir, 0o755)
		if err := Write(path, []byte("[1]\n"), 0o644); err == nil {
			t.Fatal("write into a read-only directory succeeded")
		}
	})
	checkFile(t, path, "[]\n")
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Errorf("a failed write left %v", ents)
	}
}

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
	if fi.Mode().Perm() != 0o644 {
		t.Errorf("%s has mode %v, want %v", path, fi.Mode().Perm(), os.FileMode(0o644))
	}
}

// limitFileSize makes writes beyond n bytes fail with EFBIG, as a full disk
// would, for this process until the test ends. Go ignores SIGXFSZ.
func limitFileSize(t *testing.T, n uint64) {
	t.Helper()
	var old syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_FSIZE, &old); err != nil {
		t.Skip("no RLIMIT_FSIZE:", err)
	}
	lim := old
	lim.Cur = n
	if err := syscall.Setrlimit(syscall.RLIMIT_FSIZE, &lim); err != nil {
		t.Skip("cannot set RLIMIT_FSIZE:", err)
	}
	t.Cleanup(func() { syscall.Setrlimit(syscall.RLIMIT_FSIZE, &old) })
}
