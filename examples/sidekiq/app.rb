# frozen_string_literal: true

# Sidekiq jobs whose processes are each a Prometheus target. Run:
#
#   sidekiq -r ./app.rb -c 5
#
# with REDIS_URL (Sidekiq's) and WORKERSD_JOB set; every Sidekiq process
# registers with the workersd agent as it starts and waits (bounded) for a
# final scrape as it exits, after its jobs in flight.

# The installed gem, or else the copy in this repository.
begin
  gem "workersd"
rescue Gem::LoadError
  $LOAD_PATH.unshift File.expand_path("../../clients/ruby/lib", __dir__)
end

require "prometheus/client"
Prometheus::Client.configuration.value_class = Prometheus::Client::SimpleValue
require "sidekiq"
require "workersd/sidekiq"
# Debian's redis-rb 4.8 warns about Sidekiq 6.4's calls at every fetch.
Redis.silence_deprecations = true if Redis.respond_to?(:silence_deprecations=)

Workersd::Sidekiq.setup(job: ENV.fetch("WORKERSD_JOB", "sidekiq-demo"))

# A short job: the test's truth is how many ran, counted in Redis.
class CountJob
  include Sidekiq::Worker

  def perform
    sleep 0.02
    Sidekiq.redis { |r| r.incr("done") }
  end
end

# A long job: its seconds are accounted at every scrape while it runs.
class LongJob
  include Sidekiq::Worker
  sidekiq_options queue: "long"

  def perform(seconds)
    sleep seconds
  end
end
