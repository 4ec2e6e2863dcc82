//go:build linux

// Package python runs the Python client's own unittest suite against a real
// agent and etcd (the Go side only starts them).
package python

import (
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/workersd/workersd/internal/buildtest"
	"github.com/workersd/workersd/internal/etcdtest"
)

func TestPythonClient(t *testing.T) {
	py := buildtest.Python(t, "prometheus_client")
	bin := t.TempDir()
	if err := buildtest.Build(bin, "./cmd/workersd-agent"); err != nil {
		t.Fatal(err)
	}
	etcd := etcdtest.Start(t)
	cmd := exec.Command(py, "-m", "unittest", "discover", "-v", "-s", "tests")
	cmd.Env = append(cmd.Environ(),
		"PYTHONPATH=src:tests",
		"WORKERSD_AGENT_BIN="+filepath.Join(bin, "workersd-agent"),
		"WORKERSD_ETCD_ENDPOINTS="+etcd.Endpoint(),
		"PYTHONDONTWRITEBYTECODE=1",
	)
	out, err := cmd.CombinedOutput()
	t.Logf("%s", out)
	if err != nil {
		t.Fatalf("python -m unittest: %v", err)
	}
}
