# frozen_string_literal: true

require "minitest/autorun"
require "fileutils"
require "stringio"
require "tmpdir"
# prometheus-client-mmap (Debian: ruby-prometheus-client-mmap), in-process.
require "prometheus/client"
Prometheus::Client.configuration.value_class = Prometheus::Client::SimpleValue
require "workersd"

# Real workersd agents for the tests, started from WORKERSD_AGENT_BIN on the
# etcd at WORKERSD_ETCD_ENDPOINTS (ruby_test.go builds the one and starts
# the other), each in a temporary directory, killed when the test ends.
module AgentHelper
  def setup
    super
    @dir = Dir.mktmpdir("workersd-ruby")
    @socket = File.join(@dir, "agent.sock")
    @agents = []
  end

  def teardown
    @agents.each { |pid| stop_agent(pid) }
    FileUtils.remove_entry(@dir)
    super
  end

  # Skips the test without an agent to run, but fails it in CI.
  def require_agent
    return ENV["WORKERSD_AGENT_BIN"] if ENV["WORKERSD_AGENT_BIN"].to_s != "" && ENV["WORKERSD_ETCD_ENDPOINTS"].to_s != ""

    msg = "WORKERSD_AGENT_BIN and WORKERSD_ETCD_ENDPOINTS are not set; run the tests through `go test ./clients/ruby`"
    flunk(msg) if ENV["CI"] == "true"
    skip(msg)
  end

  # Starts an agent on @socket and waits until it answers.
  def start_agent
    bin = require_agent
    log = File.join(@dir, "agent.log")
    pid = spawn(bin, "--etcd.endpoints=#{ENV.fetch("WORKERSD_ETCD_ENDPOINTS")}", "--host=test-host",
                "--listen.socket=#{@socket}", "--state.file=#{File.join(@dir, "agent.json")}", "--ttl=5s",
                in: File::NULL, out: [log, "a"], err: [log, "a"])
    @agents << pid
    wait_until(10, "the agent did not answer on #{@socket}:\n#{File.read(log)}") do
      Workersd::Agent.new(socket_path: @socket).workers
      true
    rescue Workersd::AgentError
      false
    end
    pid
  end

  def stop_agent(pid)
    Process.kill(:TERM, pid)
    Process.wait(pid)
  rescue Errno::ESRCH, Errno::ECHILD
    nil
  ensure
    @agents.delete(pid)
  end

  def agent
    Workersd::Agent.new(socket_path: @socket)
  end

  # Polls the block until it is true; fails after timeout seconds. Returns
  # how long it took.
  def wait_until(timeout, message)
    start = monotonic
    until yield
      flunk("after #{timeout}s: #{message}") if monotonic - start > timeout
      sleep 0.02
    end
    monotonic - start
  end

  def monotonic
    Process.clock_gettime(Process::CLOCK_MONOTONIC)
  end

  # GET path from 127.0.0.1:port; returns [status, headers, body].
  def http_get(port, path, accept: nil)
    TCPSocket.open("127.0.0.1", port) do |s|
      s.write("GET #{path} HTTP/1.1\r\nHost: test\r\n#{accept ? "Accept: #{accept}\r\n" : ""}\r\n")
      head, body = s.read.split("\r\n\r\n", 2)
      status = head[%r{\AHTTP/1\.1 (\d+)}, 1].to_i
      headers = head.lines.drop(1).to_h { |l| l.chomp.split(": ", 2).then { |k, v| [k.downcase, v] } }
      [status, headers, body]
    end
  end
end
