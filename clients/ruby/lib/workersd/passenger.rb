# frozen_string_literal: true

require_relative "../workersd"

module Workersd
  # Hooks for Phusion Passenger. In config.ru (or a Rails initializer),
  # where Passenger defines PhusionPassenger:
  #
  #   require "workersd/passenger"
  #   Workersd::Passenger.setup(job: "api")
  #
  # :starting_worker_process fires in each application process as it starts
  # (forked from the preloader with smart spawning: what it inherits starts
  # anew) and starts its target; :stopping_worker_process fires as Passenger
  # stops a process gracefully (max_requests, idle, detach-process,
  # passenger stop) and waits for its final scrape. A process Passenger
  # kills runs nothing: the agent removes it as it dies. Outside Passenger
  # (a console, a test), setup does nothing.
  module Passenger
    def self.setup(**options)
      return false unless defined?(::PhusionPassenger) && ::PhusionPassenger.respond_to?(:on_event)

      Workersd::Worker.new(**options)
      worker = nil
      ::PhusionPassenger.on_event(:starting_worker_process) { |_forked| worker = Workersd::Worker.new(**options).start }
      ::PhusionPassenger.on_event(:stopping_worker_process) { worker&.stop }
      true
    end
  end
end
