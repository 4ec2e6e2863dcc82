'use strict';

const { test } = require('node:test');
const assert = require('node:assert/strict');
const { spawn } = require('node:child_process');
const http = require('node:http');
const net = require('node:net');
const path = require('node:path');
const readline = require('node:readline');
const workersd = require('..');
const { skip, startAgent, until } = require('../test-support/agent');

function refused(port) {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    s.on('connect', () => {
      s.destroy();
      resolve(false);
    });
    s.on('error', (e) => resolve(e.code === 'ECONNREFUSED'));
  });
}

// scrape as Prometheus does: the registered path.
function scrape(port, path) {
  return new Promise((resolve) => {
    http
      .get({ host: '127.0.0.1', port, path, agent: false }, (res) => {
        res.resume();
        res.on('end', () => resolve(res.statusCode));
      })
      .on('error', () => resolve(0));
  });
}

// The primary stops its worker the two ways cluster offers; either way the
// worker stops accepting, is still registered until a scrape, then
// deregisters and exits 0.
for (const [how, signal] of [
  ['worker.disconnect()', 'SIGTERM'],
  ['worker.kill()', 'SIGUSR2'],
]) {
  test(`cluster: ${how} in the primary stops the worker gracefully`, { skip }, async (t) => {
    const agent = await startAgent();
    t.after(() => agent.stop('SIGKILL'));
    const app = spawn(process.execPath, [path.join(__dirname, '..', 'test-support', 'cluster-app.js')], {
      env: { ...process.env, WORKERSD_AGENT_SOCKET: agent.socket },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stderr = '';
    app.stderr.on('data', (d) => (stderr += d));
    const lines = [];
    readline.createInterface({ input: app.stdout }).on('line', (l) => lines.push(JSON.parse(l)));
    const exited = new Promise((resolve) => app.on('exit', resolve));
    t.after(() => app.kill('SIGKILL'));

    const ready = await until(10000, () => lines.find((l) => l.pid), () => `the worker did not register:\n${stderr}`);
    const listed = () => workersd.workers({ socketPath: agent.socket }).then((ws) => ws.some((w) => w.pid === ready.pid));
    assert.ok(await listed());
    assert.equal(await scrape(ready.metrics, ready.path), 200);

    app.kill(signal);
    await until(10000, () => refused(ready.app), 'the worker still accepts');
    assert.ok(await listed(), 'deregistered before a final scrape');

    // Prometheus' part: scrape until the worker is gone.
    let scrapes = 0;
    await until(
      15000,
      async () => {
        if (lines.some((l) => 'exit' in l)) return true;
        scrapes++;
        await scrape(ready.metrics, ready.path);
        return false;
      },
      () => `the worker did not exit:\n${stderr}`,
    );
    assert.ok(scrapes > 0);
    assert.deepEqual(lines.find((l) => 'exit' in l), { exit: 0, signal: null });
    assert.equal(await exited, 0);
    assert.equal(await listed(), false);
    assert.match(stderr, /workersd: deregistered pid/);
    assert.doesNotMatch(stderr, /no final scrape/);
  });
}
