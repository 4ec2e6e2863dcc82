# frozen_string_literal: true

# A small Rack application whose Unicorn workers are each a Prometheus
# target, instrumented with prometheus-client-mmap (in-process).
require "prometheus/client"
Prometheus::Client.configuration.value_class = Prometheus::Client::SimpleValue

registry = Prometheus::Client.registry
REQUESTS = registry.counter(:app_requests_total, "HTTP requests served by this worker process, by status code.")
DURATION = registry.histogram(:app_request_duration_seconds, "Time to answer a request.", {}, [0.001, 0.01, 0.1, 1])
%w[200 404].each { |code| REQUESTS.increment({ code: code }, 0) }
DURATION.get({})
# Counted by the master as it loads the application: each worker serves 0.
REQUESTS.increment({ code: "200" }, 1000)

run(lambda do |env|
  began = Process.clock_gettime(Process::CLOCK_MONOTONIC)
  code = env["PATH_INFO"] == "/" ? 200 : 404
  REQUESTS.increment({ code: code.to_s }, 1)
  DURATION.observe({}, Process.clock_gettime(Process::CLOCK_MONOTONIC) - began)
  [code, { "Content-Type" => "text/plain" }, [code == 200 ? "hello from worker #{Process.pid}\n" : "not found\n"]]
end)
