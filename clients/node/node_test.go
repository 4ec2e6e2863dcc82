//go:build linux

// Package node holds the Node.js client of the workersd agent (a plain npm
// package); this test runs its own tests, node --test, against a real agent
// and etcd.
package node

import (
	"path/filepath"
	"testing"

	"github.com/workersd/workersd/internal/testing/buildtest"
	"github.com/workersd/workersd/internal/testing/clienttest"
)

// TestNodeClient runs test/*.test.js with Node's built-in test runner. The
// tests start their own agents (the binary built here) on the etcd started
// here, each under a key prefix of its own.
func TestNodeClient(t *testing.T) {
	node := buildtest.RequireTool(t, "node", "apt-get install nodejs (Node 18 or later)")
	clienttest.Run(t, ".", []string{"TMPDIR=" + t.TempDir(), "NO_COLOR=1"}, node, "--test", "--test-reporter=spec", "test/")
}

// TestNodeScenario runs the scenario every client passes (docs/CLIENTS.md),
// with prom-client: the package has no dependencies, so the driver takes
// prom-client from examples/node, where scripts/test installs it.
func TestNodeScenario(t *testing.T) {
	node := buildtest.RequireTool(t, "node", "apt-get install nodejs (Node 18 or later)")
	modules, err := filepath.Abs(filepath.Join("..", "..", "examples", "node", "node_modules"))
	if err != nil {
		t.Fatal(err)
	}
	env := []string{"NODE_PATH=" + modules}
	clienttest.Require(t, "prom-client is missing: npm ci in examples/node", env, node, "-e", "require('prom-client')")
	clienttest.Scenario(t, clienttest.Driver{Dir: ".", Env: env, Args: []string{node, "test-support/scenario-driver.js"}})
}
