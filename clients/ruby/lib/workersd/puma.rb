# frozen_string_literal: true

require_relative "../workersd"

module Workersd
  # Hooks for Puma in cluster mode. In config/puma.rb:
  #
  #   require "workersd/puma"
  #   workers 4
  #   Workersd::Puma.setup(self, job: "api")
  #
  # Both hooks run in the worker process: on_worker_boot right after the
  # fork, before the application is loaded (without preload_app!), and
  # on_worker_shutdown once the worker has stopped serving requests, when
  # Puma stops or restarts (phased or not) or the worker gets SIGTERM. A
  # worker Puma kills (worker_timeout, worker_shutdown_timeout) runs no hook:
  # the agent removes it as it dies. Keep worker_shutdown_timeout (30 s)
  # above the final scrape's bound (15 s).
  module Puma
    # dsl: the configuration (self in config/puma.rb). Every keyword goes to
    # Workersd::Worker.new (job:, labels:, exposition:, ...).
    def self.setup(dsl, **options)
      # Refuses unknown or missing settings here, as Puma starts, rather
      # than in each worker, where Puma would only log the hook's failure.
      Workersd::Worker.new(**options)
      worker = nil
      dsl.on_worker_boot { worker = Workersd::Worker.new(**options).start }
      dsl.on_worker_shutdown { worker&.stop }
    end
  end
end
