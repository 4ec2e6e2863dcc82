# frozen_string_literal: true

# A plain Ruby process that serves no HTTP (a `rails runner` listener, a
# queue consumer, a cron-like loop) as its own Prometheus target: start a
# Workersd::Worker, count, and stop it before exiting, which waits (bounded)
# for a final scrape so that the last counts reach Prometheus. Run:
#
#   WORKERSD_JOB=listener ruby listener.rb
#
# SIGTERM or SIGINT stops it; it prints how many events it handled.

# The installed gem, or else the copy in this repository.
begin
  gem "workersd"
rescue Gem::LoadError
  $LOAD_PATH.unshift File.expand_path("../../clients/ruby/lib", __dir__)
end

require "prometheus/client"
Prometheus::Client.configuration.value_class = Prometheus::Client::SimpleValue
require "workersd"

EVENTS = Prometheus::Client.registry.counter(:listener_events_total, "Events this process handled.")
EVENTS.increment({}, 0)

worker = Workersd::Worker.new(job: ENV.fetch("WORKERSD_JOB", "listener")).start
stop = false
%w[TERM INT].each { |sig| trap(sig) { stop = true } }
handled = 0
until stop
  sleep 0.01 # wait for an event: here, a tick
  EVENTS.increment
  handled += 1
end
worker.stop
puts "handled #{handled} events"
