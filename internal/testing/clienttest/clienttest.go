//go:build linux

// Package clienttest tests the non-Go clients (Python, Ruby, Node) against a
// real workersd-agent and etcd, the same way for each: Run runs a client's
// own test suite, told where they are by WORKERSD_AGENT_BIN and
// WORKERSD_ETCD_ENDPOINTS (it starts the agents it needs itself); Scenario
// runs the one scenario every client must pass (docs/CLIENTS.md), written
// once, through a small driver program of each client.
package clienttest

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/workersd/workersd/internal/procgroup"
	"github.com/workersd/workersd/internal/testing/buildtest"
	"github.com/workersd/workersd/internal/testing/etcdtest"
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
	bin := agentBinary(t)
	etcd := etcdtest.Start(t)

	ctx, cancel := context.WithTimeout(context.Background(), Timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.Env = append(cmd.Environ(), env...)
	cmd.Env = append(cmd.Env,
		"WORKERSD_AGENT_BIN="+bin,
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

// agentBinary builds workersd-agent for the test and returns its path.
func agentBinary(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "bin")
	if err := buildtest.Build(dir, "./cmd/workersd-agent"); err != nil {
		t.Fatal(err)
	}
	return filepath.Join(dir, "workersd-agent")
}

// Require skips the test unless name with args runs (with env added to the
// environment), and fails it in CI, where scripts/test must have installed
// what it needs (hint says how). It is buildtest's policy for a library of
// a client's language, which buildtest.RequireTool cannot see on PATH.
func Require(t *testing.T, hint string, env []string, name string, args ...string) {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Env = append(cmd.Environ(), env...)
	if out, err := cmd.CombinedOutput(); err != nil {
		buildtest.Missing(t, fmt.Sprintf("%s (%s %v: %v: %s)", hint, name, args, err, out))
	}
}
