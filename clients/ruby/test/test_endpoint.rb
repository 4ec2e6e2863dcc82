# frozen_string_literal: true

require_relative "agent_helper"

class TestMetricsEndpoint < Minitest::Test
  include AgentHelper

  def test_serves_the_exposition
    registry = Prometheus::Client::Registry.new
    registry.counter(:app_requests, "Requests.").increment({}, 3)
    endpoint = Workersd::MetricsEndpoint.new(Workersd::Exposition.new(registry), host: "127.0.0.1").start
    status, headers, body = http_get(endpoint.port, "/metrics", accept: "application/openmetrics-text;version=1.0.0,text/plain;q=0.5")
    assert_equal 200, status
    assert_equal Workersd::Exposition::OPENMETRICS, headers["content-type"]
    assert_includes body, "app_requests_total 3\n"
    assert body.end_with?("# EOF\n"), body

    status, headers, body = http_get(endpoint.port, "/metrics")
    assert_equal 200, status
    assert_equal Workersd::Exposition::TEXT, headers["content-type"]
    assert_includes body, "app_requests_total 3\n"
    refute_includes body, "_created"

    assert_equal 404, http_get(endpoint.port, "/")[0]
  ensure
    endpoint&.close
  end

  def test_plain_callables
    endpoint = Workersd::MetricsEndpoint.new(-> { "x_total 1\n" }, host: "127.0.0.1").start
    _, headers, body = http_get(endpoint.port, "/metrics")
    assert_equal Workersd::Exposition::TEXT, headers["content-type"]
    assert_equal "x_total 1\n", body
    endpoint.close

    endpoint = Workersd::MetricsEndpoint.new(->(accept) { ["text/x-test", accept.to_s] }, host: "127.0.0.1").start
    _, headers, body = http_get(endpoint.port, "/metrics", accept: "a/b")
    assert_equal "text/x-test", headers["content-type"]
    assert_equal "a/b", body
  ensure
    endpoint&.close
  end

  # Prometheus scrapes a path of the worker's own: a stale target (a gone
  # worker whose port this process took) gets a 404, and a scrape of
  # /metrics by anyone else does not count as the final one.
  def test_own_path
    endpoint = Workersd::MetricsEndpoint.new(-> { "x_total 1\n" }, host: "127.0.0.1", path: "/metrics/42-ab").start
    assert_equal "/metrics/42-ab", endpoint.path
    assert_equal 404, http_get(endpoint.port, "/metrics/41-cd")[0]
    waiter = Thread.new { endpoint.wait_final_scrape(10) }
    wait_until(2, "the waiter did not start") { waiter.status == "sleep" }
    assert_equal [200, "x_total 1\n"], http_get(endpoint.port, "/metrics").values_at(0, 2)
    assert_nil waiter.join(0.3), "a scrape of /metrics counted as final"
    assert_equal 200, http_get(endpoint.port, "/metrics/42-ab?x=1")[0]
    assert_equal true, waiter.value
  ensure
    endpoint&.close
  end

  # Only a scrape that begins after wait_final_scrape is called counts: one
  # in progress at that moment may carry counts made before the exit.
  def test_final_scrape_begins_after_the_call
    entered = Queue.new
    release = Queue.new
    blocking = true
    exposition = lambda do
      if blocking
        entered << true
        release.pop
      end
      "x_total 1\n"
    end
    endpoint = Workersd::MetricsEndpoint.new(exposition, host: "127.0.0.1").start
    refute endpoint.wait_final_scrape(0.1), "no scrape at all"

    early = Thread.new { http_get(endpoint.port, "/metrics") }
    entered.pop # the early scrape has begun
    blocking = false
    waiter = Thread.new { endpoint.wait_final_scrape(10) }
    release << true
    assert_equal 200, early.value[0]
    assert_nil waiter.join(0.3), "a scrape that began before the call counted as final"

    assert_equal 200, http_get(endpoint.port, "/metrics")[0]
    assert_equal true, waiter.value
  ensure
    release << true
    endpoint&.close
  end

  # A registry that raises while rendering (prometheus-client-mmap's own
  # Text.marshal on a histogram): every scrape is a 500, logged once per
  # cause, not at every scrape.
  def test_failing_exposition_logged_once_per_cause
    require "prometheus/client/formats/text"
    registry = Prometheus::Client::Registry.new
    registry.histogram(:app_latency_seconds, "Latency.").observe({}, 0.2)
    mode = :marshal
    exposition = lambda do
      case mode
      when :marshal then Prometheus::Client::Formats::Text.marshal(registry)
      when :other then raise ArgumentError, "another cause #{rand}"
      else "x_total 1\n"
      end
    end
    log = StringIO.new
    endpoint = Workersd::MetricsEndpoint.new(exposition, host: "127.0.0.1", log: log).start
    3.times do
      status, _, body = http_get(endpoint.port, "/metrics")
      assert_equal 500, status
      assert_includes body, "NoMethodError"
    end
    assert_equal 1, log.string.scan("/metrics fails").size, log.string
    assert_includes log.string, "NoMethodError"
    mode = :other
    2.times { assert_equal 500, http_get(endpoint.port, "/metrics")[0] }
    assert_equal 2, log.string.scan("/metrics fails").size, log.string
    mode = :fixed
    assert_equal 200, http_get(endpoint.port, "/metrics")[0]
    assert_equal 2, log.string.scan("/metrics fails").size
  ensure
    endpoint&.close
  end

  # A scrape that fails after the exit began ends the wait for the final
  # scrape at once: the next would fail too.
  def test_failed_final_scrape_ends_the_wait
    failing = false
    endpoint = Workersd::MetricsEndpoint.new(-> { failing ? raise("broken") : "x_total 1\n" }, host: "127.0.0.1",
                                      path: "/metrics/1-ab", log: StringIO.new).start
    assert_nil endpoint.render_error
    waiter = Thread.new { endpoint.wait_final_scrape(10) }
    wait_until(2, "the waiter did not start") { waiter.status == "sleep" }
    failing = true
    refute_nil endpoint.render_error
    took = monotonic
    assert_equal 500, http_get(endpoint.port, "/metrics/1-ab")[0]
    assert_equal false, waiter.value
    assert_operator monotonic - took, :<, 1
    assert_equal "broken", endpoint.final_failure.message
  ensure
    endpoint&.close
  end

  # A final scrape counts only once the scraper received its whole answer in
  # time (docs/SOAK.md, "a final scrape that never arrived"; the Go worker's
  # TestFinalScrapeThatNeverArrived, the Python client's test_final_scrape).
  def test_unread_answer_is_not_the_final_scrape
    check_undelivered(20_000, 0)
  end

  def test_cut_off_answer_is_not_the_final_scrape
    check_undelivered(20_000_000, 1)
  end

  private

  # A scraper that sends its request after the exit began and reads read
  # bytes of the answer (then resets the connection; 0: reads nothing, as
  # over a cut link) does not make the final scrape; a scrape read whole
  # after it does.
  def check_undelivered(size, read)
    skip "the kernel reports a socket's unacknowledged bytes on Linux only" unless RUBY_PLATFORM.include?("linux")
    body = "# TYPE test_requests counter\ntest_requests_total 7\n" + ("# padding\n" * (size / 10))
    endpoint = Workersd::MetricsEndpoint.new(-> { body }, host: "127.0.0.1", path: "/metrics/42-ab").start
    waiter = Thread.new { endpoint.wait_final_scrape(20) }
    wait_until(2, "the waiter did not start") { waiter.status == "sleep" }

    bad = Socket.new(:INET, :STREAM)
    bad.setsockopt(Socket::SOL_SOCKET, Socket::SO_RCVBUF, 1024)
    bad.connect(Socket.sockaddr_in(endpoint.port, "127.0.0.1"))
    bad.write("GET /metrics/42-ab HTTP/1.1\r\nHost: x\r\nX-Prometheus-Scrape-Timeout-Seconds: 1\r\n\r\n")
    if read.positive?
      refute_empty bad.readpartial(read)
      bad.setsockopt(Socket::SOL_SOCKET, Socket::SO_LINGER, [1, 0].pack("ii")) # RST, the rest unread
      bad.close
    end
    wait_until(10, "the undelivered scrape neither counted nor refused") { !waiter.alive? || endpoint.undelivered_scrapes.positive? }
    assert waiter.alive?, "a scrape whose answer was never read counted as the final scrape"
    bad.close unless bad.closed?

    status, _, got = http_get(endpoint.port, "/metrics/42-ab")
    assert_equal 200, status
    assert_includes got, "test_requests_total 7"
    assert_equal true, waiter.value
  ensure
    bad&.close unless bad.nil? || bad.closed?
    endpoint&.close
  end
end
