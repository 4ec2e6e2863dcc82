# frozen_string_literal: true

# The application's metrics, with prometheus-client-mmap (Debian:
# ruby-prometheus-client-mmap) in its in-process mode: each worker process
# keeps its own values, and Workersd serves them as that worker's target.
# puma.rb requires this file, so the metrics exist in the master and every
# worker serves all of them from its first scrape; what a worker inherits
# from the master starts anew in it (Workersd::Worker#start).
require "prometheus/client"
Prometheus::Client.configuration.value_class = Prometheus::Client::SimpleValue

module AppMetrics
  registry = Prometheus::Client.registry
  REQUESTS = registry.counter(:app_requests_total, "HTTP requests served by this worker process, by status code.")
  DURATION = registry.histogram(:app_request_duration_seconds, "Time to answer a request.", {},
                                [0.001, 0.01, 0.1, 1])
  IN_FLIGHT = registry.gauge(:app_requests_in_flight, "Requests being answered now.")
  LOADS = registry.counter(:app_loads_total, "Times this process loaded the application.")
  # The series exist from the start, at 0, as Prometheus' docs advise.
  %w[200 404].each { |code| REQUESTS.increment({ code: code }, 0) }
  LOADS.increment({}, 0)
  IN_FLIGHT.set({}, 0)
  DURATION.get({})
end
