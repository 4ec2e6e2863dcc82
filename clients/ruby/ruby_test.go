//go:build linux

// Package ruby runs the Ruby client's minitest suite (test/test_*.rb)
// against a real workersd-agent and etcd: the Ruby tests start and stop
// agents of their own, so the client is checked against the API it talks
// to, not a fake.
package ruby

import (
	"testing"

	"github.com/workersd/workersd/internal/testing/buildtest"
	"github.com/workersd/workersd/internal/testing/clienttest"
)

func TestRubyClient(t *testing.T) {
	ruby := requireRuby(t)
	clienttest.Run(t, ".", nil, ruby, "-Ilib", "-e", `Dir["test/test_*.rb"].sort.each { |f| require_relative f }`, "--", "--verbose")
}

// TestRubyScenario runs the scenario every client passes (docs/CLIENTS.md),
// with prometheus-client-mmap.
func TestRubyScenario(t *testing.T) {
	ruby := requireRuby(t)
	clienttest.Scenario(t, clienttest.Driver{Dir: ".", Args: []string{ruby, "-Ilib", "test/scenario_driver.rb"}})
}

// requireRuby returns the ruby that has what the client's tests need.
func requireRuby(t *testing.T) string {
	ruby := buildtest.RequireTool(t, "ruby", "apt-get install ruby ruby-minitest")
	clienttest.Require(t, "minitest is missing (apt-get install ruby-minitest)", nil, ruby, "-e", `require "minitest"`)
	clienttest.Require(t, "prometheus-client-mmap is missing (apt-get install ruby-prometheus-client-mmap)", nil,
		ruby, "-e", `require "prometheus/client"`)
	return ruby
}
