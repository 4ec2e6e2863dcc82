'use strict';

// Real workersd-agent processes for the tests. The Go wrapper
// (node_test.go) builds the agent and starts etcd, and passes
// WORKERSD_AGENT_BIN and WORKERSD_ETCD_ENDPOINTS.

const { spawn } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const agent = require('../lib/agent');

const BIN = process.env.WORKERSD_AGENT_BIN || '';
const ETCD = process.env.WORKERSD_ETCD_ENDPOINTS || '';

// skip is the reason to skip the agent's tests, or false. In CI they run,
// and fail for want of the agent.
const skip =
  (!BIN || !ETCD) && process.env.CI !== 'true'
    ? 'WORKERSD_AGENT_BIN and WORKERSD_ETCD_ENDPOINTS not set (go test ./clients/node sets them)'
    : false;

let seq = 0;

function tempDir() {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'workersd-node-'));
}

// until polls cond every 10 ms until it is truthy and resolves with its
// value; rejects with msg after timeoutMs.
async function until(timeoutMs, cond, msg) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await cond();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`after ${timeoutMs} ms: ${typeof msg === 'function' ? msg() : msg}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

// startAgent starts an agent on socket (default: a new one in a new
// directory), under an etcd prefix of its own, and resolves once it
// answers (not 503).
async function startAgent({ socket, dir } = {}) {
  if (!BIN || !ETCD) throw new Error('WORKERSD_AGENT_BIN and WORKERSD_ETCD_ENDPOINTS must be set (CI=true)');
  dir = dir || tempDir();
  socket = socket || path.join(dir, 'agent.sock');
  const prefix = `/workersd-node-test/${process.pid}-${++seq}/`;
  const proc = spawn(
    BIN,
    [
      `--etcd.endpoints=${ETCD}`,
      `--etcd.prefix=${prefix}`,
      '--host=test-host',
      `--listen.socket=${socket}`,
      `--state.file=${path.join(dir, 'agent.json')}`,
      '--ttl=5s',
      '--slot-hold=0s',
    ],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let output = '';
  proc.stdout.on('data', (d) => (output += d));
  proc.stderr.on('data', (d) => (output += d));
  const exited = new Promise((resolve) => proc.on('exit', resolve));
  let exitCode;
  exited.then((c) => (exitCode = c));
  await until(
    10000,
    async () => {
      if (exitCode !== undefined) throw new Error(`the agent exited (${exitCode}):\n${output}`);
      try {
        await agent.workers({ socketPath: socket, timeoutMs: 1000 });
        return true;
      } catch {
        return false;
      }
    },
    () => `the agent does not answer on ${socket}:\n${output}`,
  );
  return {
    socket,
    dir,
    prefix,
    proc,
    output: () => output,
    // stop ends it with sig (SIGTERM: registrations stay, as for an agent
    // restart) and resolves once it exited.
    async stop(sig = 'SIGTERM') {
      if (exitCode === undefined) proc.kill(sig);
      await exited;
    },
  };
}

module.exports = { skip, startAgent, tempDir, until };
