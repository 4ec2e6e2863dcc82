# frozen_string_literal: true

require_relative "lib/workersd/version"

Gem::Specification.new do |s|
  s.name = "workersd"
  s.version = Workersd::VERSION
  s.summary = "Every worker process of a Ruby server (Puma, Unicorn, Passenger, Sidekiq, DelayedJob) its own Prometheus target"
  s.description = <<~DESC
    Each worker serves /metrics on an ephemeral port and registers with the
    host's workersd agent over its Unix socket; a final scrape before a
    graceful exit keeps job-wide totals exact. Standard library only.
  DESC
  s.authors = ["The workersd authors"]
  s.homepage = "https://github.com/workersd/workersd"
  s.license = "Apache-2.0"
  s.required_ruby_version = ">= 3.0"
  s.files = Dir["lib/**/*.rb"] + ["README.md"]
  s.require_paths = ["lib"]
  s.metadata = { "source_code_uri" => "https://github.com/workersd/workersd/tree/main/clients/ruby" }
end
