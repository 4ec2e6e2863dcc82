# frozen_string_literal: true

# Enqueues a CountJob every ENQUEUE_EVERY seconds (0.02) until SIGTERM, then
# prints how many; with an argument, enqueues one LongJob of that many
# seconds and exits.
require "sidekiq"
require_relative "app"

if ARGV[0]
  LongJob.perform_async(Float(ARGV[0]))
  puts "enqueued LongJob(#{ARGV[0]})"
  exit
end

stop = false
trap("TERM") { stop = true }
every = Float(ENV.fetch("ENQUEUE_EVERY", "0.02"))
n = 0
until stop
  CountJob.perform_async
  n += 1
  sleep every
end
puts "enqueued #{n}"
$stdout.flush
