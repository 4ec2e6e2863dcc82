# frozen_string_literal: true

require_relative "agent_helper"

class TestWorker < Minitest::Test
  include AgentHelper

  def new_worker(job, **options)
    @log = StringIO.new
    Workersd::Worker.new(job: job, exposition: -> { "x_total 1\n" }, agent: agent, log: @log,
                         final_scrape_timeout: 10, **options)
  end

  def listed
    agent.workers.find { |w| w["pid"] == Process.pid }
  end

  # The worker starts while the agent is down, serves anyway, and registers
  # soon after the agent comes: within the longest pause between attempts
  # (1 s) and an answer (the agent waits up to 0.5 s for etcd).
  def test_registers_once_the_agent_starts
    require_agent
    worker = new_worker("ruby-late")
    took = monotonic
    worker.start
    took = monotonic - took
    assert_operator took, :<, 0.5, "start waited for the agent"
    refute worker.registered?
    assert_equal 200, http_get(worker.endpoint.port, "/metrics")[0], "the endpoint serves without the agent"
    # Long enough for the backoff to reach its longest pause.
    sleep 2
    assert_equal 1, @log.string.scan("agent unreachable").size, "logged once: #{@log.string}"

    start_agent
    ready = monotonic
    wait_until(1.5, "not registered 1.5s after the agent answered: #{@log.string}") { worker.registered? }
    took = monotonic - ready
    entry = listed
    refute_nil entry
    assert entry["address"].end_with?(":#{worker.endpoint.port}"), entry["address"]
    assert_match %r{\A/metrics/#{Process.pid}-\h+\z}, entry["metrics_path"]
    assert_equal worker.endpoint.path, entry["metrics_path"]
    assert_match(/registered pid #{Process.pid} port #{worker.endpoint.port}: slot \d+/, @log.string)
    puts "\nregistered #{took.round(3)}s after the agent answered"

    # stop waits for a scrape that begins after it, then deregisters.
    stopper = Thread.new { worker.stop }
    wait_until(5, "stop did not return after a scrape") do
      http_get(worker.endpoint.port, worker.endpoint.path) rescue nil
      !stopper.alive?
    end
    assert_nil listed, "still registered after stop"
    refute_includes @log.string, "no final scrape"
  end

  def test_stop_without_registration_returns_at_once
    worker = new_worker("ruby-never").start
    wait_until(2, "no attempt logged") { @log.string.include?("agent unreachable") }
    took = monotonic
    worker.stop
    assert_operator monotonic - took, :<, 0.5, "stop waited though the worker never registered"
    assert_raises(Errno::ECONNREFUSED) { http_get(worker.endpoint.port, "/metrics") }
  end

  # A refusal other than 503 is final: logged, no retry, no wait at stop.
  def test_refused_registration_gives_up
    start_agent
    worker = new_worker("bad/job").start
    wait_until(5, "the refusal was not logged: #{@log.string}") { @log.string.include?("registration failed") }
    assert_includes @log.string, "400"
    refute worker.registered?
    took = monotonic
    worker.stop
    assert_operator monotonic - took, :<, 0.5
    assert_nil listed
  end

  # Workersd::Puma.setup installs the two hooks Puma runs in the worker.
  def test_puma_hooks
    require "workersd/puma"
    start_agent
    dsl = Struct.new(:boot, :shutdown) do
      def on_worker_boot(&blk) = self.boot = blk
      def on_worker_shutdown(&blk) = self.shutdown = blk
    end.new
    Workersd::Puma.setup(dsl, job: "ruby-puma", exposition: -> { "x_total 1\n" }, agent: agent, log: StringIO.new,
                              final_scrape_timeout: 0.2)
    dsl.boot.call(0)
    wait_until(2, "the boot hook did not register") { listed }
    dsl.shutdown.call(0)
    assert_nil listed
  end

  # A registered worker whose metrics cannot be rendered does not wait the
  # final scrape's whole bound at its exit: it logs why and deregisters.
  def test_stop_does_not_wait_for_a_scrape_that_cannot_succeed
    start_agent
    worker = new_worker("ruby-broken", exposition: -> { raise NoMethodError, "undefined method `total'" })
    worker.start
    wait_until(5, "not registered: #{@log.string}") { worker.registered? }
    took = monotonic
    worker.stop
    took = monotonic - took
    assert_operator took, :<, 1, "stop waited for a final scrape that cannot succeed"
    assert_includes @log.string, "not waiting for a final scrape"
    assert_nil listed
  end

  # Workers register a path of their own: /metrics/<pid>-<16 hex digits>
  # (docs/KEYS.md).
  def test_own_metrics_path
    assert_match(/\A\/metrics\/#{Process.pid}-\h{16}\z/, Workersd::Worker.own_metrics_path)
    refute_equal Workersd::Worker.own_metrics_path, Workersd::Worker.own_metrics_path
  end

  # docs/CLIENTS.md: $WORKERSD_LABELS is "name=value,..."; an item that is
  # not name=value, or a name given twice, is an error, never dropped.
  def test_labels_from_env
    assert_equal({ "team" => "core", "tier" => "web" }, Workersd.labels_from_env(" team=core, tier = web ,"))
    assert_equal({}, Workersd.labels_from_env(""))
    assert_equal({ "q" => "a=b" }, Workersd.labels_from_env("q=a=b"))
    err = assert_raises(ArgumentError) { Workersd.labels_from_env("team=core,oops") }
    assert_includes err.message, "WORKERSD_LABELS"
    assert_includes err.message, "oops"
    assert_raises(ArgumentError) { Workersd.labels_from_env("=x") }
    err = assert_raises(ArgumentError) { Workersd.labels_from_env("a=1,a=2") }
    assert_includes err.message, "twice"
  end

  # The job comes from job: or $WORKERSD_JOB; neither is a clear error.
  def test_job_required
    saved = ENV.delete("WORKERSD_JOB")
    err = assert_raises(ArgumentError) { Workersd::Worker.new(exposition: -> { "" }) }
    assert_includes err.message, "WORKERSD_JOB"
  ensure
    ENV["WORKERSD_JOB"] = saved if saved
  end

  def test_old_names_are_aliases
    assert_same Workersd::MetricsEndpoint, Workersd::Endpoint
  end
end

