# frozen_string_literal: true

# Unicorn, every worker its own Prometheus target: each worker serves
# /metrics on an ephemeral port and registers with the workersd agent after
# its fork, and at its exit (a QUIT to it or to the master) waits (bounded)
# for a last scrape, then deregisters. Run: unicorn -c unicorn.rb
# (beside config.ru).
#
# Settings from the environment, so the file works unchanged in the example
# and in its test:
#
#   UNICORN_LISTEN                 127.0.0.1:8080
#   UNICORN_WORKERS                4
#   WORKERSD_JOB                   unicorn-demo
#   WORKERSD_AGENT_SOCKET          /run/workersd/agent.sock
#   WORKERSD_METRICS_HOST          0.0.0.0, the address /metrics binds
#   WORKERSD_FINAL_SCRAPE_TIMEOUT  15 (seconds)

# The installed gem, or else the copy in this repository.
begin
  gem "workersd"
rescue Gem::LoadError
  $LOAD_PATH.unshift File.expand_path("../../clients/ruby/lib", __dir__)
end

require "workersd/unicorn"

worker_processes Integer(ENV.fetch("UNICORN_WORKERS", "4"))
listen ENV.fetch("UNICORN_LISTEN", "127.0.0.1:8080")
# The master loads the application (and its metrics) once; what a worker
# inherits from it starts anew in the worker.
preload_app true
# Above the final scrape's bound (15 s): Unicorn kills a worker that takes
# longer, before its last counts are scraped.
timeout 60
Workersd::Unicorn.setup(self, job: ENV.fetch("WORKERSD_JOB", "unicorn-demo"))
