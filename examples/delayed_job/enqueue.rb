# frozen_string_literal: true

# Enqueues a CountJob every ENQUEUE_EVERY seconds (0.02) until SIGTERM, then
# prints how many; "enqueue.rb left" prints how many jobs are left.
require_relative "jobs"

connect
if ARGV[0] == "left"
  puts Delayed::Job.count
  exit
end
stop = false
trap("TERM") { stop = true }
every = Float(ENV.fetch("ENQUEUE_EVERY", "0.02"))
n = 0
until stop
  Delayed::Job.enqueue(CountJob.new)
  n += 1
  sleep every
end
puts "enqueued #{n}"
