# frozen_string_literal: true

# Puma in cluster mode, every worker its own Prometheus target: each
# worker serves /metrics on an ephemeral port and registers with the
# workersd agent when it boots, and waits (bounded) for a last scrape, then
# deregisters, when it shuts down. Run: puma -C puma.rb (beside config.ru).
#
# Settings from the environment, so the file works unchanged in the example
# and in its test:
#
#   PUMA_BIND                      tcp://127.0.0.1:9292
#   PUMA_WORKERS                   4
#   WORKERSD_JOB                   puma-demo
#   WORKERSD_AGENT_SOCKET          /run/workersd/agent.sock
#   WORKERSD_METRICS_HOST          0.0.0.0, the address /metrics binds
#   WORKERSD_FINAL_SCRAPE_TIMEOUT  15 (seconds)
#   PUMA_PRELOAD                   set: preload_app! (no phased restarts)

# The installed gem, or else the copy in this repository.
begin
  gem "workersd"
rescue Gem::LoadError
  $LOAD_PATH.unshift File.expand_path("../../clients/ruby/lib", __dir__)
end

require "workersd/puma"
# The application's metrics, defined in the master: every worker serves
# them from its first scrape.
require_relative "metrics"

workers Integer(ENV.fetch("PUMA_WORKERS", "4"))
threads 1, 5
bind ENV.fetch("PUMA_BIND", "tcp://127.0.0.1:9292")
# Above the final scrape's bound (15 s): Puma kills a worker whose shutdown
# takes longer, before its last counts are scraped.
worker_shutdown_timeout 30
# Without preload_app! each worker loads config.ru itself, and SIGUSR1
# restarts the workers one by one (a phased restart). With it, what a worker
# inherits from the master starts anew in the worker.
preload_app! if ENV["PUMA_PRELOAD"]
Workersd::Puma.setup(self, job: ENV.fetch("WORKERSD_JOB", "puma-demo"))
