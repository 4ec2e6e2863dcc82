//go:build linux

// Package python installs the Python client with pip and runs its own
// unittest suite on the installed copy, against a real agent and etcd (the
// Go side only starts them).
package python

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/workersd/workersd/internal/buildtest"
	"github.com/workersd/workersd/internal/clienttest"
)

func TestPythonClient(t *testing.T) {
	py := buildtest.Python(t, "setuptools.build_meta", "pip", "prometheus_client")
	dir := t.TempDir()
	// pip builds in the source tree: build from a copy.
	src := filepath.Join(dir, "src")
	if err := os.CopyFS(src, os.DirFS(".")); err != nil {
		t.Fatal(err)
	}
	site := filepath.Join(dir, "site")
	run(t, src, nil, py, "-m", "pip", "install", "--quiet", "--no-build-isolation", "--no-deps", "--no-index", "--target", site, ".")

	clienttest.Run(t, "tests", []string{"PYTHONPATH=" + site + ":.", "PYTHONDONTWRITEBYTECODE=1"},
		py, "-m", "unittest", "discover", "-v", "-t", ".", "-s", ".")
}

func run(t *testing.T, dir string, env []string, name string, args ...string) {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	cmd.Env = append(cmd.Environ(), env...)
	out, err := cmd.CombinedOutput()
	t.Logf("%s %v:\n%s", name, args, out)
	if err != nil {
		t.Fatalf("%s %v: %v", name, args, err)
	}
}
