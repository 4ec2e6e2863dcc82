# frozen_string_literal: true

require_relative "workersd/version"
require_relative "workersd/agent"
require_relative "workersd/registry"
require_relative "workersd/endpoint"
require_relative "workersd/worker"

# Every worker process of a pre-fork server (Puma in cluster mode, or any
# forking Ruby program) its own Prometheus target: each worker serves its
# own /metrics on an ephemeral port and registers it with the host's
# workersd agent, which keeps it in etcd for sdwriter and Prometheus.
#
#   Workersd::Agent     the agent's API on its Unix socket
#   Workersd::Endpoint  the worker's /metrics server
#   Workersd::Worker    the two together: start after fork, stop before exit
#   Workersd::Registry  per-process counters with created timestamps
#   Workersd::Puma      hooks for config/puma.rb (require "workersd/puma")
module Workersd
  @registry = Registry.new

  # The registry a Worker serves unless given another exposition: the
  # application's counters, in this process.
  def self.registry
    @registry
  end
end
