# frozen_string_literal: true

require_relative "agent_helper"

class TestTracer < Minitest::Test
  include AgentHelper

  def setup
    super
    @now = 100.0
    @registry = Prometheus::Client::Registry.new
    @seconds = @registry.counter(:job_seconds_total, "Seconds in jobs.")
  end

  def tracer(**options)
    Workersd::Tracer.new(clock: -> { @now }, **options)
  end

  def seconds(labels = {})
    @seconds.get(labels)
  end

  # Work in flight is accounted at every collect (before each scrape), not
  # in one piece at its end; the total is the true elapsed time.
  def test_accounts_at_every_collect
    t = tracer
    unit = t.start(@seconds, task: "long")
    @now += 5
    t.collect
    assert_equal 5, seconds(task: "long")
    @now += 5
    t.collect
    assert_equal 10, seconds(task: "long")
    assert_equal 1, t.in_flight
    @now += 2.5
    assert_equal 12.5, unit.end
    assert_equal 12.5, seconds(task: "long")
    assert_equal 0, t.in_flight
    @now += 10
    assert_equal 12.5, unit.end, "a second end adds nothing"
    t.collect
    assert_equal 12.5, seconds(task: "long")
  end

  def test_trace_block
    t = tracer
    value = t.trace(@seconds, task: "block") do
      @now += 3
      t.collect
      assert_equal 3, seconds(task: "block")
      @now += 1
      :done
    end
    assert_equal :done, value
    assert_equal 4, seconds(task: "block")
    assert_raises(RuntimeError) { t.trace(@seconds, task: "raises") { @now += 2; raise "boom" } }
    assert_equal 2, seconds(task: "raises"), "a unit that raises is accounted to its end"
  end

  # A unit in flight beyond max_age is abandoned: what earlier collects
  # accounted stays, nothing more is added.
  def test_max_age
    t = tracer(max_age: 60)
    unit = t.start(@seconds)
    @now += 50
    t.collect
    @now += 20
    t.collect
    assert_equal 50, seconds
    assert_equal({ "unreachable" => 0, "max_age" => 1 }, t.abandoned)
    assert_equal 0, t.in_flight
    @now += 5
    assert_equal 50, unit.end
    assert_equal 50, seconds
  end

  # A handle that nobody can end any more (garbage collected) is abandoned
  # at the next collect after the collection.
  def test_unreachable_handles
    t = tracer
    Thread.new { 10.times { t.start(@seconds, task: "lost") } }.join
    kept = t.start(@seconds, task: "kept")
    @now += 1
    deadline = monotonic + 10
    until t.abandoned["unreachable"] == 10
      flunk("handles not collected: #{t.abandoned}") if monotonic > deadline
      GC.start(full_mark: true, immediate_sweep: true)
      t.collect
    end
    assert_equal 1, t.in_flight
    @now += 1
    t.collect
    assert_equal 2, seconds(task: "kept")
    assert_operator seconds(task: "lost"), :<=, 10, "nothing added after the abandonment"
    kept.end
  end

  # client_ruby's counters take keywords; prometheus-client-mmap's do not.
  def test_keyword_counters
    counter = Class.new do
      attr_reader :calls

      def increment(by: 1, labels: {})
        (@calls ||= []) << [by, labels]
      end
    end.new
    t = tracer
    u = t.start(counter, task: "kw")
    @now += 2
    u.end
    assert_equal [[2.0, { task: "kw" }]], counter.calls
  end

  # The Tracer as a Worker's before_scrape: each scrape shows the work so
  # far, with the real clock.
  def test_before_scrape
    t = Workersd::Tracer.new
    exposition = Workersd::Exposition.new(@registry)
    endpoint = Workersd::MetricsEndpoint.new(exposition, host: "127.0.0.1", before_scrape: [t.method(:collect)]).start
    unit = t.start(@seconds)
    values = 3.times.map do
      sleep 0.05
      body = http_get(endpoint.port, "/metrics")[2]
      Float(body[/^job_seconds_total (\S+)$/, 1])
    end
    assert_equal values.sort, values
    assert_operator values.first, :>, 0
    assert_operator values.last, :>, values.first
    unit.end
  ensure
    endpoint&.close
  end
end
