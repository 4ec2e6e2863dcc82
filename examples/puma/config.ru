# frozen_string_literal: true

# A small Rack application whose Puma workers are each a Prometheus target,
# instrumented with prometheus-client-mmap (metrics.rb).
#
# Prometheus sums over the workers:
#   sum without (instance, worker, host) (rate(app_requests_total[5m]))

require_relative "metrics"

AppMetrics::LOADS.increment
$stderr.puts "app loaded in pid #{Process.pid}"

# APP_BOOT_EPOCH_MS (the test sets it): each worker's first request also
# counts app_boot_units_total by the milliseconds since then, more than any
# worker before it counted, before Prometheus first scrapes it: the case
# only a created timestamp tells Prometheus about on a reused instance.
BOOT_EPOCH_MS = ENV["APP_BOOT_EPOCH_MS"]&.to_i
BOOT_UNITS = Prometheus::Client.registry.counter(:app_boot_units_total, "Units counted at a worker's first request.")
booted = nil
boot_lock = Mutex.new

run(lambda do |env|
  AppMetrics::IN_FLIGHT.increment({}, 1)
  began = Process.clock_gettime(Process::CLOCK_MONOTONIC)
  if BOOT_EPOCH_MS
    boot_lock.synchronize do
      next if booted == Process.pid

      booted = Process.pid
      units = (Time.now.to_f * 1000).to_i - BOOT_EPOCH_MS
      BOOT_UNITS.increment({}, units)
      $stderr.puts "boot units #{units} in pid #{Process.pid}"
    end
  end
  code = env["PATH_INFO"] == "/" ? 200 : 404
  AppMetrics::REQUESTS.increment({ code: code.to_s }, 1)
  body = code == 200 ? "hello from worker #{Process.pid}\n" : "not found\n"
  AppMetrics::DURATION.observe({}, Process.clock_gettime(Process::CLOCK_MONOTONIC) - began)
  [code, { "Content-Type" => "text/plain" }, [body]]
ensure
  AppMetrics::IN_FLIGHT.decrement({}, 1)
end)
