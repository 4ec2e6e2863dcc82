# frozen_string_literal: true

# A small Rack application under Phusion Passenger, every application
# process its own Prometheus target. Run (from this directory):
#
#   passenger start --engine=builtin --spawn-method smart --max-requests 1000
#
# with WORKERSD_JOB set. With smart spawning the preloader loads this file
# and forks the application processes: each starts its target as it starts
# (what it inherited from the preloader starts anew) and waits (bounded) for
# a final scrape as Passenger stops it (max_requests, idle, detach-process,
# passenger stop).

# The installed gem, or else the copy in this repository.
begin
  gem "workersd"
rescue Gem::LoadError
  $LOAD_PATH.unshift File.expand_path("../../clients/ruby/lib", __dir__)
end

require "prometheus/client"
Prometheus::Client.configuration.value_class = Prometheus::Client::SimpleValue
require "workersd/passenger"

registry = Prometheus::Client.registry
REQUESTS = registry.counter(:app_requests_total, "HTTP requests served by this process, by status code.")
DURATION = registry.histogram(:app_request_duration_seconds, "Time to answer a request.", {}, [0.001, 0.01, 0.1, 1])
%w[200 404].each { |code| REQUESTS.increment({ code: code }, 0) }
DURATION.get({})

Workersd::Passenger.setup(job: ENV.fetch("WORKERSD_JOB", "passenger-demo"))

run(lambda do |env|
  began = Process.clock_gettime(Process::CLOCK_MONOTONIC)
  code = env["PATH_INFO"] == "/" ? 200 : 404
  REQUESTS.increment({ code: code.to_s }, 1)
  DURATION.observe({}, Process.clock_gettime(Process::CLOCK_MONOTONIC) - began)
  [code, { "Content-Type" => "text/plain" }, [code == 200 ? "hello from process #{Process.pid}\n" : "not found\n"]]
end)
