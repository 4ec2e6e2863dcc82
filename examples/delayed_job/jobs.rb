# frozen_string_literal: true

# DelayedJob on ActiveRecord with SQLite (Debian:
# ruby-delayed-job-active-record, ruby-sqlite3), its jobs, and workersd's
# plugin: every DelayedJob worker process is a Prometheus target.

# The installed gem, or else the copy in this repository.
begin
  gem "workersd"
rescue Gem::LoadError
  $LOAD_PATH.unshift File.expand_path("../../clients/ruby/lib", __dir__)
end

require "prometheus/client"
Prometheus::Client.configuration.value_class = Prometheus::Client::SimpleValue
require "active_record"
require "delayed_job"
require "delayed_job_active_record"
require "workersd/delayed_job"

DATABASE = { adapter: "sqlite3", database: ENV.fetch("DJ_DATABASE", "jobs.sqlite3"), timeout: 10_000 }.freeze

def connect
  ActiveRecord::Base.establish_connection(DATABASE)
  return if ActiveRecord::Base.connection.table_exists?(:delayed_jobs)

  ActiveRecord::Schema.define do
    create_table :delayed_jobs do |t|
      t.integer :priority, default: 0, null: false
      t.integer :attempts, default: 0, null: false
      t.text :handler, null: false
      t.text :last_error
      t.datetime :run_at
      t.datetime :locked_at
      t.datetime :failed_at
      t.string :locked_by
      t.string :queue
      t.timestamps null: true
    end
    add_index :delayed_jobs, %i[priority run_at], name: "delayed_jobs_priority"
  end
end

# Before any Delayed::Worker exists: each counts its jobs and is a target.
Workersd::DelayedJob.setup(job: ENV.fetch("WORKERSD_JOB", "delayed-job-demo"))

# A short job.
class CountJob
  def perform
    sleep 0.02
  end
end
