# frozen_string_literal: true

# A pool of DelayedJob worker processes, each its own Prometheus target
# (jobs.rb): the master forks DJ_WORKERS (2) workers and replaces each that
# exits; SIGTERM to a worker stops it after its current job (then it waits
# for its final scrape), SIGTERM to the master stops them all.
require_relative "jobs"

connect
ActiveRecord::Base.connection.disconnect!
$stdout.sync = true

def spawn_worker
  fork do
    connect
    Delayed::Worker.new(sleep_delay: 0.1).start
  end
end

stopping = false
trap("TERM") { stopping = true }
workers = Array.new(Integer(ENV.fetch("DJ_WORKERS", "2"))) { spawn_worker }
puts "pool #{Process.pid}: workers #{workers.join(" ")}"
until workers.empty?
  pid = begin
    Process.wait
  rescue Interrupt, SignalException
    nil
  end
  if stopping
    workers.each { |w| Process.kill(:TERM, w) rescue nil } # rubocop:disable Style/RescueModifier
    workers.delete(pid)
    next
  end
  next unless workers.delete(pid)

  workers << spawn_worker
  puts "pool #{Process.pid}: worker #{pid} exited, #{workers.last} started"
end
