//go:build linux

// Package node holds the Node.js client of the workersd agent (a plain npm
// package); this test runs its own tests, node --test, against a real agent
// and etcd.
package node

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/workersd/workersd/internal/buildtest"
	"github.com/workersd/workersd/internal/etcdtest"
)

// TestNodeClient runs test/*.test.js with Node's built-in test runner. The
// tests start their own agents (the binary built here) on the etcd started
// here, each under a key prefix of its own.
func TestNodeClient(t *testing.T) {
	node := buildtest.RequireTool(t, "node", "apt-get install nodejs (Node 18 or later)")
	bin := filepath.Join(t.TempDir(), "bin")
	if err := buildtest.Build(bin, "./cmd/workersd-agent"); err != nil {
		t.Fatal(err)
	}
	etcd := etcdtest.Start(t)

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, node, "--test", "--test-reporter=spec", "test/")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.Env = append(os.Environ(),
		"WORKERSD_AGENT_BIN="+filepath.Join(bin, "workersd-agent"),
		"WORKERSD_ETCD_ENDPOINTS="+etcd.Endpoint(),
		"TMPDIR="+t.TempDir(),
		"NO_COLOR=1",
	)
	// Its own process group, killed whole: no agent a test started
	// outlives it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	err := cmd.Run()
	if cmd.Process != nil {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
	t.Logf("node --test:\n%s", out.String())
	if err != nil {
		t.Fatalf("node --test test/: %v", err)
	}
}
