# frozen_string_literal: true

require_relative "../workersd"

module Workersd
  # DelayedJob: every worker process its own target, with its jobs counted,
  # however the processes are run (bin/delayed_job, rake jobs:work, a pool
  # of forked processes). Before the workers are created:
  #
  #   require "workersd/delayed_job"
  #   Workersd::DelayedJob.setup(job: "jobs")
  #
  # adds a Delayed::Plugin: around :execute (a Delayed::Worker's whole run,
  # in its process) it starts the process' target and, once the worker
  # stops (TERM or INT: after its current job), waits for the final scrape
  # and deregisters; around :invoke_job it counts the jobs
  # (delayed_job_jobs_total{class, outcome}, delayed_job_job_seconds_total
  # with jobs in flight accounted at every scrape,
  # delayed_job_jobs_in_flight; see JobMetrics). A process killed with
  # SIGKILL runs nothing: the agent removes it as it dies.
  module DelayedJob
    # Every keyword but registry: goes to Workersd::Worker.new; job:
    # defaults to $WORKERSD_JOB, else "delayed_job". Returns the JobMetrics.
    def self.setup(registry: nil, **options)
      require "delayed_job"
      options[:job] ||= ENV.fetch("WORKERSD_JOB", "delayed_job")
      metrics = JobMetrics.new(registry || Metrics.registry, "delayed_job")
      options[:before_scrape] = [*options[:before_scrape], metrics.method(:collect)]
      Workersd::Worker.new(**options)
      plugin = Class.new(::Delayed::Plugin) do
        callbacks do |lifecycle|
          lifecycle.around(:execute) do |worker, *args, &block|
            target = Workersd::Worker.new(**options).start
            begin
              block.call(worker, *args)
            ensure
              target.stop
            end
          end
          lifecycle.around(:invoke_job) do |job, *args, &block|
            metrics.run(DelayedJob.job_class(job)) { block.call(job, *args) }
          end
        end
      end
      ::Delayed::Worker.plugins << plugin
      metrics
    end

    # The job's class name: the payload's, or the ActiveJob it wraps.
    def self.job_class(job)
      payload = job.payload_object
      payload.respond_to?(:job_data) ? payload.job_data["job_class"] : payload.class.name
    rescue StandardError
      "unknown"
    end
  end
end
