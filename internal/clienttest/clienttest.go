//go:build linux

// Package clienttest runs a non-Go client's own test suite (Python, Ruby,
// Node) against a real workersd-agent and etcd, the same way for each: the
// suite is told where they are by WORKERSD_AGENT_BIN and
// WORKERSD_ETCD_ENDPOINTS and starts the agents it needs itself.
package clienttest

import (
	"context"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/workersd/workersd/internal/buildtest"
	"github.com/workersd/workersd/internal/etcdtest"
	"github.com/workersd/workersd/internal/procgroup"
)

// Timeout bounds a suite's run.
const Timeout = 5 * time.Minute

// Run builds the agent, starts etcd and runs name with args in dir, with
// env and the two variables above added to the environment; it logs the
// output and fails t if the suite fails. The suite runs in a process group
// of its own, killed whole when it ends or times out: no agent it started
// outlives the test, even if the suite dies before its teardown.
func Run(t *testing.T, dir string, env []string, name string, args ...string) {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "bin")
	if err := buildtest.Build(bin, "./cmd/workersd-agent"); err != nil {
		t.Fatal(err)
	}
	etcd := etcdtest.Start(t)

	ctx, cancel := context.WithTimeout(context.Background(), Timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.Env = append(cmd.Environ(), env...)
	cmd.Env = append(cmd.Env,
		"WORKERSD_AGENT_BIN="+filepath.Join(bin, "workersd-agent"),
		"WORKERSD_ETCD_ENDPOINTS="+etcd.Endpoint())
	cmd.SysProcAttr = procgroup.Attr()
	cmd.Cancel = func() error { return procgroup.Kill(cmd.Process) }
	out, err := cmd.CombinedOutput()
	if cmd.Process != nil {
		procgroup.Kill(cmd.Process)
	}
	t.Logf("%s %v:\n%s", name, args, out)
	if err != nil {
		t.Fatalf("%s %v: %v", name, args, err)
	}
}
