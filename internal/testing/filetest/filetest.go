// Package filetest checks files and makes their writes fail, for the tests
// of the atomic writer and of what uses it (sdwriter's output).
package filetest

import (
	"os"
	"testing"
)

// Check fails t unless path holds want with mode.
func Check(t testing.TB, path, want string, mode os.FileMode) {
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
	if fi.Mode().Perm() != mode {
		t.Errorf("%s has mode %v, want %v", path, fi.Mode().Perm(), mode)
	}
}

// MinSize is the smallest limit LimitSize takes (see there): far above
// what go test logs of one package's run.
const MinSize = 256 << 10
