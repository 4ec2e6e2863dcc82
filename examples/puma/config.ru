# frozen_string_literal: true

# A small Rack application whose Puma workers are each a Prometheus target.
#
# Its counters live in the worker process (Workersd.registry), created as
# Puma loads this file in each worker after the fork (no preload_app!), so
# their created timestamps are the worker's start. Prometheus sums over the
# workers: sum without (instance, worker, host) (rate(app_requests_total[5m])).

require "workersd"

REQUESTS = Workersd.registry.counter(:app_requests, docstring: "HTTP requests served by this worker process.")
RESPONSES = Workersd.registry.counter(:app_responses, docstring: "HTTP responses by status code.", labels: [:code])
# The series exist from the start, at 0, as Prometheus' docs advise.
%w[200 404].each { |code| RESPONSES.init_label_set(code: code) }

run(lambda do |env|
  REQUESTS.increment
  if env["PATH_INFO"] == "/"
    RESPONSES.increment(labels: { code: "200" })
    [200, { "Content-Type" => "text/plain" }, ["hello from worker #{Process.pid}\n"]]
  else
    RESPONSES.increment(labels: { code: "404" })
    [404, { "Content-Type" => "text/plain" }, ["not found\n"]]
  end
end)
