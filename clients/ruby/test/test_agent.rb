# frozen_string_literal: true

require_relative "agent_helper"

class TestAgent < Minitest::Test
  include AgentHelper

  def test_register_deregister_round_trip
    start_agent
    reg = agent.register(job: "ruby-roundtrip", port: 40_211, labels: { version: "1.4.2" })
    assert_equal Process.pid, reg["pid"]
    assert_equal "registered", reg["state"]
    assert_equal({ "version" => "1.4.2" }, reg["labels"])
    assert_match %r{\A/workersd/v1/ruby-roundtrip/test-host/\d+\z}, reg["key"]

    listed = agent.workers.find { |w| w["pid"] == Process.pid }
    refute_nil listed, "GET /v1/workers does not list pid #{Process.pid}"
    assert_equal reg["id"], listed["id"]
    assert listed["address"].end_with?(":40211"), listed["address"]

    again = agent.register(job: "ruby-roundtrip", port: 40_211, labels: { version: "1.4.2" })
    assert_equal reg["id"], again["id"], "the same request again is idempotent"

    gone = agent.deregister(Process.pid)
    assert_equal "deregistered", gone["state"]
    assert_empty agent.workers
    err = assert_raises(Workersd::AgentError) { agent.deregister(Process.pid) }
    assert_equal 404, err.status
  end

  def test_refusal_names_the_field
    start_agent
    err = assert_raises(Workersd::AgentError) { agent.register(job: "bad/job", port: 40_211) }
    assert_equal 400, err.status
    assert_equal "job", err.field
    assert_includes err.message, "job"
    refute err.retryable?
    refute err.transient?, "the deprecated alias answers the same"

    err = assert_raises(Workersd::AgentError) { agent.register(job: "ruby-field", port: 70_000) }
    assert_equal 400, err.status
    assert_equal "port", err.field
    assert_includes err.message, "port"
    assert_empty agent.workers, "a refused request changes nothing"
  end

  def test_no_agent
    err = assert_raises(Workersd::AgentError) { agent.register(job: "ruby-none", port: 40_211) }
    assert_nil err.status
    assert err.retryable?
    assert err.transient?, "the deprecated alias answers the same"
    assert_includes err.error, @socket
    assert_includes err.message, @socket
  end
end
