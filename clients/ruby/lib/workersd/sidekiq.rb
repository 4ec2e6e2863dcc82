# frozen_string_literal: true

require_relative "../workersd"

module Workersd
  # Sidekiq: every Sidekiq process its own target, with its jobs counted.
  # In the file Sidekiq requires (-r), before it starts:
  #
  #   require "workersd/sidekiq"
  #   Workersd::Sidekiq.setup(job: "jobs")
  #
  # The :startup event starts the process' target. Sidekiq's :shutdown fires
  # before the jobs in flight end, so the final scrape runs at the process'
  # exit (at_exit), after Sidekiq has waited for them (its -t timeout): their
  # counts reach Prometheus too. A process killed with SIGKILL runs nothing:
  # the agent removes it as it dies.
  #
  # A server middleware counts every job, in Prometheus::Client.registry
  # (or registry:):
  #
  #   sidekiq_jobs_total{class, outcome}  jobs ended: "success", "failure",
  #                                       "interrupted" (Sidekiq's shutdown
  #                                       cut it short; it runs again)
  #   sidekiq_job_seconds_total{class}    seconds spent in jobs, those still
  #                                       running included: a Tracer accounts
  #                                       them at every scrape, so a 20-minute
  #                                       job shows as one worker-second per
  #                                       second while it runs
  #   sidekiq_jobs_in_flight              jobs running now
  module Sidekiq
    # Every keyword but registry: goes to Workersd::Worker.new; job:
    # defaults to $WORKERSD_JOB, else "sidekiq". Returns the JobMetrics.
    def self.setup(registry: nil, **options)
      require "sidekiq"
      options[:job] ||= ENV.fetch("WORKERSD_JOB", "sidekiq")
      metrics = JobMetrics.new(registry || Metrics.registry, "sidekiq")
      options[:before_scrape] = [*options[:before_scrape], metrics.method(:collect)]
      Workersd::Worker.new(**options)
      ::Sidekiq.configure_server do |config|
        config.on(:startup) do
          worker = Workersd::Worker.new(**options).start
          at_exit { worker.stop }
        end
        config.server_middleware { |chain| chain.add(Middleware, metrics) }
      end
      metrics
    end

    # The server middleware.
    class Middleware
      def initialize(metrics)
        @metrics = metrics
      end

      def call(_worker, job, _queue, &block)
        @metrics.run(job["wrapped"] || job["class"], &block)
      end
    end
  end
end
