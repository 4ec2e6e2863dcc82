//go:build linux

// Package rubytest is what the Ruby examples' end-to-end tests share:
// finding Ruby libraries from Debian's packages, and the client in this
// tree.
package rubytest

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
)

// RequireLib checks that ruby can require lib (a gem from a Debian
// package). Missing, it skips the test, but fails it in CI (CI=true),
// where scripts/test must have installed it; hint says how to get it.
func RequireLib(t testing.TB, lib, hint string) {
	t.Helper()
	ruby, err := exec.LookPath("ruby")
	if err == nil {
		var out []byte
		out, err = exec.Command(ruby, "-e", "require "+quote(lib)).CombinedOutput()
		if err != nil {
			err = &libError{lib: lib, out: string(out)}
		}
	}
	if err == nil {
		return
	}
	msg := "ruby cannot load " + lib + " (" + hint + "): " + err.Error()
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
	}
	t.Skip(msg)
}

type libError struct{ lib, out string }

func (e *libError) Error() string { return e.out }

func quote(s string) string { return "'" + s + "'" }

// ClientLib is the Ruby client's lib directory in this tree, for RUBYLIB:
// the tests run it even where a workersd gem is installed.
func ClientLib(t testing.TB) string {
	t.Helper()
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		t.Fatal("no caller information")
	}
	lib, err := filepath.Abs(filepath.Join(filepath.Dir(file), "..", "..", "..", "clients", "ruby", "lib"))
	if err != nil {
		t.Fatal(err)
	}
	return lib
}
