# frozen_string_literal: true

# The Ruby client under internal/testing/clienttest's shared scenario: the scenario
# drives it through the line protocol documented in
# internal/testing/clienttest/scenario.go (commands on stdin, one JSON event per
# line on stdout), identically for the three clients. Everything the Worker
# is configured with comes from the environment, as in a real server's hook.

require "json"
require "prometheus/client"
Prometheus::Client.configuration.value_class = Prometheus::Client::SimpleValue
require "workersd"

$stdout.sync = true

def emit(**event)
  $stdout.puts(JSON.generate(event))
end

events = Prometheus::Client.registry.counter(:scenario_events, "Events the scenario counted.")
begin
  worker = Workersd::Worker.new
rescue ArgumentError => e
  emit(event: "config_error", error: e.message)
  exit 2
end
worker.start
emit(event: "started", pid: Process.pid, port: worker.endpoint.port, path: worker.endpoint.path)
total = 0
$stdin.each_line do |line|
  cmd = line.split
  case cmd[0]
  when "inc"
    events.increment({}, Integer(cmd[1]))
    total += Integer(cmd[1])
    emit(event: "inc", total: total)
  when "register"
    begin
      reg = Workersd::Agent.new(socket_path: cmd[1]).register(job: cmd[2], port: Integer(cmd[3]))
      emit(event: "registered", state: reg["state"], key: reg["key"])
    rescue Workersd::AgentError => e
      emit(event: "agent_error", status: e.status, retryable: e.retryable?, field: e.field, error: e.error)
    end
  when "stop"
    worker.stop
    emit(event: "stopped")
  else
    emit(event: "unknown_command", error: line.strip)
  end
end
