//go:build linux

// Package ruby runs the Ruby client's minitest suite (test/test_*.rb)
// against a real workersd-agent and etcd: the Ruby tests start and stop
// agents of their own, so the client is checked against the API it talks
// to, not a fake.
package ruby

import (
	"os"
	"os/exec"
	"testing"

	"github.com/workersd/workersd/internal/buildtest"
	"github.com/workersd/workersd/internal/clienttest"
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
	if out, err := exec.Command(ruby, "-e", `require "prometheus/client"`).CombinedOutput(); err != nil {
		msg := "prometheus-client-mmap is missing (apt-get install ruby-prometheus-client-mmap): " + string(out)
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	clienttest.Run(t, ".", nil, ruby, "-Ilib", "-e", `Dir["test/test_*.rb"].sort.each { |f| require_relative f }`, "--", "--verbose")
}
