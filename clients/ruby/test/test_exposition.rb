# frozen_string_literal: true

require_relative "agent_helper"

class TestExposition < Minitest::Test
  OM = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"

  def setup
    @registry = Prometheus::Client::Registry.new
    @requests = @registry.counter(:app_requests_total, "Requests served.")
    @responses = @registry.counter(:app_responses, "Responses by \"code\".")
    @temperature = @registry.gauge(:app_temperature, "A gauge.")
    @latency = @registry.histogram(:app_latency_seconds, "Latency.", {}, [0.1, 1, 2.5])
    @sizes = @registry.summary(:app_size_bytes, "Sizes.")
  end

  def count
    @requests.increment({}, 3)
    @responses.increment({ code: "404" }, 1)
    @responses.increment({ code: "a\"b\\c\nd" }, 2)
    @temperature.set({}, 21.5)
    @latency.observe({ path: "/" }, 0.5)
    @latency.observe({ path: "/" }, 3)
    @sizes.observe({}, 100)
    @sizes.observe({}, 50)
  end

  # Every type of prometheus-client-mmap (whose own Text.marshal raises on
  # a histogram) in OpenMetrics, with a created timestamp at the worker's
  # start after each series of a counter, histogram or summary.
  def test_openmetrics_every_type
    count
    exposition = Workersd::Exposition.new(@registry)
    before = Time.now.to_f
    exposition.reset_inherited!
    type, body = exposition.call(OM)
    assert_equal Workersd::Exposition::OPENMETRICS, type
    lines = body.lines.map(&:chomp)
    [
      "# TYPE app_requests counter", "app_requests_total 3",
      "# TYPE app_responses counter", %(app_responses_total{code="404"} 1),
      %(app_responses_total{code="a\\"b\\\\c\\nd"} 2), %(# HELP app_responses Responses by \\"code\\".),
      "# TYPE app_temperature gauge", "app_temperature 21.5",
      "# TYPE app_latency_seconds histogram",
      %(app_latency_seconds_bucket{path="/",le="0.1"} 0), %(app_latency_seconds_bucket{path="/",le="1.0"} 1),
      %(app_latency_seconds_bucket{path="/",le="2.5"} 1), %(app_latency_seconds_bucket{path="/",le="+Inf"} 2),
      %(app_latency_seconds_count{path="/"} 2), %(app_latency_seconds_sum{path="/"} 3.5),
      "# TYPE app_size_bytes summary", "app_size_bytes_count 2", "app_size_bytes_sum 150"
    ].each { |want| assert_includes lines, want, body }
    assert_equal "# EOF", lines.last
    created = lines.grep(/_created/)
    assert_equal 5, created.size, body # 3 counter series, 1 histogram, 1 summary
    created.each { |l| assert_in_delta before, Float(l.split.last), 2, l }
    refute(lines.any? { |l| l.start_with?("app_temperature_created") }, "a gauge has no created timestamp")
    i = lines.index(%(app_latency_seconds_sum{path="/"} 3.5))
    assert_match(/\Aapp_latency_seconds_created\{path="\/"\} \d+\.\d{3}\z/, lines[i + 1])
  end

  # A scraper that does not ask for OpenMetrics gets the text format 0.0.4,
  # without created timestamps; counters are <name>_total in both.
  def test_text_format
    count
    type, body = Workersd::Exposition.new(@registry).call("text/plain;version=0.0.4")
    assert_equal Workersd::Exposition::TEXT, type
    lines = body.lines.map(&:chomp)
    ["# TYPE app_requests_total counter", "app_requests_total 3", "# TYPE app_responses_total counter",
     %(app_responses_total{code="404"} 1), %(# HELP app_responses_total Responses by "code".),
     "# TYPE app_temperature gauge", "app_temperature 21.5", "# TYPE app_latency_seconds histogram",
     %(app_latency_seconds_bucket{path="/",le="+Inf"} 2), %(app_latency_seconds_count{path="/"} 2),
     "# TYPE app_size_bytes summary", "app_size_bytes_sum 150"].each { |want| assert_includes lines, want, body }
    refute_includes body, "_created"
    refute_includes body, "# EOF"
  end

  # Counts a forked worker inherited from its master (preload_app!) start
  # anew in it at Worker#start; gauges are served as they are.
  def test_inherited_counts_start_anew
    count
    exposition = Workersd::Exposition.new(@registry)
    reader, writer = IO.pipe
    pid = fork do
      reader.close
      exposition.reset_inherited!
      @requests.increment({}, 1)
      @latency.observe({ path: "/" }, 0.05)
      writer.write(exposition.call(OM)[1])
      writer.close
      exit!(0)
    end
    writer.close
    body = reader.read
    Process.wait(pid)
    lines = body.lines.map(&:chomp)
    ["app_requests_total 1", %(app_responses_total{code="404"} 0), "app_temperature 21.5",
     %(app_latency_seconds_bucket{path="/",le="0.1"} 1), %(app_latency_seconds_bucket{path="/",le="+Inf"} 1),
     %(app_latency_seconds_count{path="/"} 1), %(app_latency_seconds_sum{path="/"} 0.05),
     "app_size_bytes_count 0"].each { |want| assert_includes lines, want, body }
    # The master itself still serves its own counts.
    assert_includes exposition.call(OM)[1], "app_requests_total 3\n"
  end

  # Without a registry given, Prometheus::Client.registry, looked up at
  # each scrape.
  def test_default_registry
    exposition = Workersd::Exposition.new
    name = :"app_default_#{rand(1 << 30)}_total"
    refute_includes exposition.call(OM)[1], name.to_s
    Prometheus::Client.registry.counter(name, "Made after the exposition.").increment({}, 2)
    assert_includes exposition.call(OM)[1], "#{name} 2\n"
  end
end
