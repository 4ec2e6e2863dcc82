//go:build linux

// Package ruby runs the Ruby client's minitest suite (test/test_*.rb)
// against a real workersd-agent and etcd: the Ruby tests start and stop
// agents of their own, so the client is checked against the API it talks
// to, not a fake.
package ruby

import (
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/workersd/workersd/internal/buildtest"
	"github.com/workersd/workersd/internal/etcdtest"
)

func TestRubyClient(t *testing.T) {
	ruby := buildtest.RequireTool(t, "ruby", "apt-get install ruby ruby-minitest")
	if out, err := exec.Command(ruby, "-e", `require "minitest"`).CombinedOutput(); err != nil {
		msg := "minitest is missing (apt-get install ruby-minitest): " + string(out)
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	bin := filepath.Join(t.TempDir(), "bin")
	if err := buildtest.Build(bin, "./cmd/workersd-agent"); err != nil {
		t.Fatal(err)
	}
	etcd := etcdtest.Start(t)

	cmd := exec.Command(ruby, "-Ilib", "-e", `Dir["test/test_*.rb"].sort.each { |f| require_relative f }`, "--", "--verbose")
	cmd.Env = append(os.Environ(),
		"WORKERSD_AGENT_BIN="+filepath.Join(bin, "workersd-agent"),
		"WORKERSD_ETCD_ENDPOINTS="+etcd.Endpoint())
	// Its own process group, with the agents it starts: none outlives the
	// test, even if Ruby dies before its teardown.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	t.Cleanup(func() {
		if cmd.Process != nil {
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		}
	})
	out, err := cmd.CombinedOutput()
	t.Logf("ruby %s:\n%s", cmd.Args[1:], out)
	if err != nil {
		t.Fatalf("the Ruby client's tests failed: %v", err)
	}
}
