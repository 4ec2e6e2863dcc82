//go:build linux

// Package node holds the Node.js client of the workersd agent (a plain npm
// package); this test runs its own tests, node --test, against a real agent
// and etcd.
package node

import (
	"testing"

	"github.com/workersd/workersd/internal/buildtest"
	"github.com/workersd/workersd/internal/clienttest"
)

// TestNodeClient runs test/*.test.js with Node's built-in test runner. The
// tests start their own agents (the binary built here) on the etcd started
// here, each under a key prefix of its own.
func TestNodeClient(t *testing.T) {
	node := buildtest.RequireTool(t, "node", "apt-get install nodejs (Node 18 or later)")
	clienttest.Run(t, ".", []string{"TMPDIR=" + t.TempDir(), "NO_COLOR=1"}, node, "--test", "--test-reporter=spec", "test/")
}
