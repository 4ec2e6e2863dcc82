'use strict';

// The Node client under internal/testing/clienttest's shared scenario: the
// scenario drives it through the line protocol documented in
// internal/testing/clienttest/scenario.go (commands on stdin, one JSON event per
// line on stdout), identically for the three clients. Everything the
// Worker is configured with comes from the environment, as in a real
// server's hook. prom-client is the metrics library (clients/node_test.go
// finds it in examples/node's node_modules).

const readline = require('node:readline');
const client = require('prom-client');
const workersd = require('..');

function emit(event) {
  process.stdout.write(JSON.stringify(event) + '\n');
}

async function main() {
  const events = new client.Counter({ name: 'scenario_events_total', help: 'Events the scenario counted.' });
  let worker;
  try {
    worker = new workersd.Worker({ exposition: () => client.register.metrics(), contentType: client.register.contentType });
  } catch (e) {
    emit({ event: 'config_error', error: e.message });
    process.exitCode = 2;
    return;
  }
  await worker.start();
  emit({ event: 'started', pid: process.pid, port: worker.port, path: worker.metricsPath });
  let total = 0;
  for await (const line of readline.createInterface({ input: process.stdin })) {
    const cmd = line.split(/\s+/).filter(Boolean);
    if (cmd[0] === 'inc') {
      events.inc(Number(cmd[1]));
      total += Number(cmd[1]);
      emit({ event: 'inc', total });
    } else if (cmd[0] === 'register') {
      try {
        const reg = await workersd.register({ job: cmd[2], port: Number(cmd[3]) }, { socketPath: cmd[1] });
        emit({ event: 'registered', state: reg.state, key: reg.key });
      } catch (e) {
        if (!(e instanceof workersd.AgentError)) throw e;
        emit({ event: 'agent_error', status: e.status, retryable: e.retryable, field: e.field, error: e.error });
      }
    } else if (cmd[0] === 'stop') {
      await worker.stop();
      emit({ event: 'stopped' });
    } else {
      emit({ event: 'unknown_command', error: line.trim() });
    }
  }
}

main().catch((e) => {
  process.stderr.write(`scenario driver: ${e.stack}\n`);
  process.exitCode = 1;
});
