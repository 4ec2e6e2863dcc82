# frozen_string_literal: true

require_relative "workersd/version"
require_relative "workersd/agent"
require_relative "workersd/metrics"
require_relative "workersd/exposition"
require_relative "workersd/tracer"
require_relative "workersd/job_metrics"
require_relative "workersd/endpoint"
require_relative "workersd/worker"

# Every worker process of a pre-fork server (Puma in cluster mode, or any
# forking Ruby program) its own Prometheus target: each worker serves its
# own /metrics on an ephemeral port and registers it with the host's
# workersd agent, which keeps it in etcd for sdwriter and Prometheus.
#
#   Workersd::Agent       the agent's API on its Unix socket
#   Workersd::MetricsEndpoint
#                         the worker's /metrics server (Endpoint: its old name)
#   Workersd::Worker      the two together: start after fork, stop before exit
#   Workersd::Exposition  Prometheus::Client.registry (prometheus-client or
#                         prometheus-client-mmap) as OpenMetrics with
#                         created timestamps at the worker's start
#   Workersd::Tracer      long jobs accounted at every scrape
#   Workersd::Puma, ::Unicorn, ::Passenger, ::Sidekiq, ::DelayedJob
#                         hooks (require "workersd/puma", ...)
module Workersd
end
