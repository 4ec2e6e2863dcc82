# frozen_string_literal: true

module Workersd
  # Job counters of one process, for the job-runner hooks (Sidekiq,
  # DelayedJob): <prefix>_jobs_total{class, outcome},
  # <prefix>_job_seconds_total{class} (a Tracer accounts jobs in flight at
  # every collect) and <prefix>_jobs_in_flight.
  class JobMetrics
    attr_reader :tracer

    def initialize(registry, prefix, tracer: Tracer.new)
      @tracer = tracer
      @jobs = Metrics.counter(:"#{prefix}_jobs_total", "Jobs ended in this process, by outcome.", registry: registry,
                                                                                              labels: %i[class outcome])
      @seconds = Metrics.counter(:"#{prefix}_job_seconds_total",
                                 "Seconds this process spent in jobs, running ones included (accounted at every scrape).",
                                 registry: registry, labels: %i[class])
      @in_flight = Metrics.gauge(:"#{prefix}_jobs_in_flight", "Jobs running in this process.", registry: registry)
      Metrics.set(@in_flight, 0)
    end

    # Runs the block as one job of class name, timed and counted.
    def run(name)
      name = name.to_s
      unit = @tracer.start(@seconds, class: name)
      outcome = "failure"
      begin
        result = yield
        outcome = "success"
        result
      rescue Exception => e # rubocop:disable Lint/RescueException
        outcome = "interrupted" unless e.is_a?(StandardError)
        raise
      ensure
        unit.end
        Metrics.increment(@jobs, 1, class: name, outcome: outcome)
      end
    end

    # Accounts the jobs in flight; a Worker's before_scrape.
    def collect
      @tracer.collect
      Metrics.set(@in_flight, @tracer.in_flight)
    end
  end
end
