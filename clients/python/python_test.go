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

	"github.com/workersd/workersd/internal/testing/buildtest"
	"github.com/workersd/workersd/internal/testing/clienttest"
)

func TestPythonClient(t *testing.T) {
	py, env := install(t)
	clienttest.Run(t, "tests", env, py, "-m", "unittest", "discover", "-v", "-t", ".", "-s", ".")
}

// TestPythonScenario runs the scenario every client passes
// (docs/CLIENTS.md) on the installed package, with prometheus_client.
func TestPythonScenario(t *testing.T) {
	py, env := install(t)
	clienttest.Scenario(t, clienttest.Driver{Dir: "tests", Env: env, Args: []string{py, "scenario_driver.py"}})
}

// install installs the package with pip into a directory of the test's and
// returns the Python to run and the environment that imports it from there.
func install(t *testing.T) (py string, env []string) {
	py = buildtest.Python(t, "setuptools.build_meta", "pip", "prometheus_client")
	dir := t.TempDir()
	// pip builds in the source tree: build from a copy.
	src := filepath.Join(dir, "src")
	if err := os.CopyFS(src, os.DirFS(".")); err != nil {
		t.Fatal(err)
	}
	site := filepath.Join(dir, "site")
	run(t, src, nil, py, "-m", "pip", "install", "--quiet", "--no-build-isolation", "--no-deps", "--no-index", "--target", site, ".")
	return py, []string{"PYTHONPATH=" + site + ":.", "PYTHONDONTWRITEBYTECODE=1"}
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
