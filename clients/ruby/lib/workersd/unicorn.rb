# frozen_string_literal: true

require_relative "../workersd"

module Workersd
  # Hooks for Unicorn. In its configuration file:
  #
  #   require "workersd/unicorn"
  #   worker_processes 4
  #   Workersd::Unicorn.setup(self, job: "api")
  #
  # after_fork (in the new worker, before it loads the application unless
  # preload_app) starts the worker's target; Unicorn has no hook in a worker
  # that stops, so the final scrape runs at the worker's exit (at_exit): a
  # QUIT to the worker or to the master (graceful) ends the worker loop and
  # exits through it. TERM and INT make a worker exit! at once, and a worker
  # Unicorn kills (timeout) runs nothing: the agent removes those as they
  # die. Keep Unicorn's timeout (60 s) above the final scrape's bound (15 s).
  module Unicorn
    # config: the Unicorn::Configurator (self in the configuration file).
    # Every keyword goes to Workersd::Worker.new (job:, labels:, ...). An
    # after_fork set before setup still runs, first.
    def self.setup(config, **options)
      # Refuses unknown or missing settings here, as Unicorn starts.
      Workersd::Worker.new(**options)
      previous = config.set[:after_fork]
      config.after_fork do |server, worker|
        previous&.call(server, worker)
        start(**options)
      end
    end

    # Starts this process' target and stops it (with its final scrape) at
    # the process' exit. For an after_fork of your own.
    def self.start(**options)
      worker = Workersd::Worker.new(**options).start
      at_exit { worker.stop }
      worker
    end
  end
end
