# frozen_string_literal: true

require_relative "agent_helper"

class TestRegistry < Minitest::Test
  def test_openmetrics_with_created_timestamps
    registry = Workersd::Registry.new
    before = Time.now.to_f
    requests = registry.counter(:app_requests_total, docstring: "Requests served.")
    responses = registry.counter(:app_responses, docstring: "Responses by \"code\".", labels: [:code])
    responses.init_label_set(code: "404")
    requests.increment
    requests.increment(by: 2)
    responses.increment(labels: { code: 200 })
    type, body = registry.call("application/openmetrics-text; version=1.0.0")
    assert_equal Workersd::Registry::OPENMETRICS, type
    lines = body.lines.map(&:chomp)
    assert_includes lines, "# TYPE app_requests counter"
    assert_includes lines, "app_requests_total 3"
    assert_includes lines, %(app_responses_total{code="404"} 0)
    assert_includes lines, %(app_responses_total{code="200"} 1)
    assert_includes lines, %(# HELP app_responses Responses by \\"code\\".)
    assert_equal "# EOF", lines.last
    created = lines.grep(/_created/).map { |l| Float(l.split.last) }
    assert_equal 3, created.size
    created.each { |c| assert_in_delta before, c, 5 }
    # Each series' created line follows its value, as Prometheus reads it.
    i = lines.index(%(app_responses_total{code="404"} 0))
    assert_match(/\Aapp_responses_created\{code="404"\} \d+\.\d{3}\z/, lines[i + 1])
  end

  def test_text_format
    registry = Workersd::Registry.new
    c = registry.counter(:jobs, docstring: "Jobs.", labels: [:queue])
    c.increment(by: 1.5, labels: { queue: "a\"b\\c\nd" })
    type, body = registry.call("text/plain")
    assert_equal Workersd::Registry::TEXT, type
    assert_includes body, "# TYPE jobs_total counter\n"
    assert_includes body, %(jobs_total{queue="a\\"b\\\\c\\nd"} 1.5\n)
    assert_equal 1.5, c.get(labels: { queue: "a\"b\\c\nd" })
  end

  def test_refuses_misuse
    registry = Workersd::Registry.new
    c = registry.counter(:x, docstring: "X.", labels: [:code])
    assert_same c, registry.counter(:x_total, docstring: "X.", labels: [:code])
    assert_raises(ArgumentError) { registry.counter(:x, docstring: "X.") }
    assert_raises(ArgumentError) { c.increment(labels: {}) }
    assert_raises(ArgumentError) { c.increment(by: -1, labels: { code: "1" }) }
    assert_raises(ArgumentError) { registry.counter(:"bad-name", docstring: "") }
  end

  # A worker forked from a process that created the counters (Puma's
  # preload_app!) starts them anew: value 0 and its own created timestamp.
  def test_reset_inherited
    registry = Workersd::Registry.new
    c = registry.counter(:x, docstring: "X.")
    c.increment(by: 5)
    registry.reset_inherited!
    assert_equal 5, c.get, "the process that created them keeps them"
    read, write = IO.pipe
    pid = fork do
      read.close
      forked = Time.now.to_f
      registry.reset_inherited!
      created = Float(registry.call("application/openmetrics-text")[1][/^x_created (\S+)/, 1])
      write.puts [c.get, created >= forked - 0.001].inspect
      exit!(0)
    end
    write.close
    assert_equal "[0, true]", read.read.chomp
    Process.wait(pid)
  end
end
