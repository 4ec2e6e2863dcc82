'use strict';

const { test } = require('node:test');
const assert = require('node:assert/strict');
const { spawn } = require('node:child_process');
const { once } = require('node:events');
const http = require('node:http');
const path = require('node:path');
const { performance } = require('node:perf_hooks');
const workersd = require('..');
const { skip, startAgent, tempDir, until } = require('../test-support/agent');

// scrape as Prometheus does: the registered path.
function scrape(port, path) {
  return new Promise((resolve, reject) => {
    http
      .get({ host: '127.0.0.1', port, path, agent: false }, (res) => {
        res.resume();
        res.on('end', () => resolve(res.statusCode));
      })
      .on('error', reject);
  });
}

function newWorker(socketPath, opts = {}) {
  const logs = [];
  const w = new workersd.Worker({
    job: 'node-worker',
    socketPath,
    host: '127.0.0.1',
    exposition: () => '# TYPE jobs_total counter\njobs_total 1\n',
    finalScrapeTimeoutMs: 10000,
    log: (m) => logs.push(m),
    ...opts,
  });
  w.logs = logs;
  return w;
}

async function listed(socketPath, pid = process.pid) {
  return (await workersd.workers({ socketPath })).filter((w) => w.pid === pid);
}

test('start without an agent returns at once; registration follows within a backoff (1 s) of the agent', { skip }, async (t) => {
  const dir = tempDir();
  const socket = path.join(dir, 'agent.sock');
  const w = newWorker(socket);
  let registeredAt = null;
  w.on('registered', () => (registeredAt = performance.now()));
  const retries = [];
  w.on('retry', (r) => retries.push({ ...r, at: performance.now() }));

  const began = performance.now();
  const port = await w.start();
  const startMs = performance.now() - began;
  assert.ok(port > 0);
  assert.ok(startMs < 200, `start took ${startMs} ms`);
  assert.equal(w.registered, false);

  // Failed attempts until the backoff reaches its cap (100, 200, 400, 800,
  // then 1000 ms), logged once.
  await until(5000, () => retries.length >= 5, 'fewer than 5 attempts');
  assert.deepEqual(retries.slice(0, 5).map((r) => r.delayMs), [100, 200, 400, 800, 1000]);
  assert.ok(retries.every((r) => r.error.status === null));
  assert.equal(w.logs.filter((m) => m.includes('agent unreachable')).length, 1, w.logs.join('\n'));

  const agent = await startAgent({ socket, dir });
  t.after(() => agent.stop('SIGKILL'));
  const answered = performance.now();
  await until(5000, () => registeredAt !== null, 'not registered within 5 s of the agent');
  // The attempt that succeeded began one backoff after the last failure:
  // at most 1 s after the agent's return, plus a late timer. The agent's
  // answer then takes what etcd takes (up to 500 ms, see docs/AGENT.md).
  const last = retries[retries.length - 1];
  const attempt = last.at + last.delayMs - answered;
  const took = registeredAt - answered;
  t.diagnostic(`the agent answered; ${Math.max(0, attempt).toFixed(0)} ms later the worker tried again, registered after ${Math.max(0, took).toFixed(0)} ms`);
  assert.ok(attempt < 1500, `the worker tried again ${attempt} ms after the agent answered`);
  assert.equal(w.registration.pid, process.pid);
  assert.match(w.registration.address, new RegExp(`:${w.port}$`));
  assert.ok(w.logs.some((m) => m.startsWith(`registered pid ${process.pid} port ${w.port}: job node-worker slot `)), w.logs.join('\n'));
  assert.equal((await listed(socket)).length, 1);

  // stop waits for a scrape that begins after it, then deregisters.
  let stopped = false;
  const stopping = w.stop().then(() => (stopped = true));
  await new Promise((r) => setImmediate(r));
  assert.equal((await listed(socket)).length, 1, 'deregistered before the final scrape');
  assert.equal(stopped, false);
  assert.equal(await scrape(w.port, w.metricsPath), 200);
  await stopping;
  assert.deepEqual(await listed(socket), []);
  assert.ok(!w.logs.some((m) => m.includes('no final scrape')), w.logs.join('\n'));
});

test('stop without a registration returns at once', async () => {
  const w = newWorker(path.join(tempDir(), 'none.sock'));
  await w.start();
  await once(w, 'retry');
  const began = performance.now();
  await w.stop();
  const took = performance.now() - began;
  assert.ok(took < 100, `stop took ${took} ms`);
  assert.equal(w.registered, false);
});

test('a refused registration is not retried', { skip }, async (t) => {
  const agent = await startAgent();
  t.after(() => agent.stop('SIGKILL'));
  const w = newWorker(agent.socket, { job: 'bad/job' });
  let retried = false;
  w.on('retry', () => (retried = true));
  await w.start();
  const [e] = await once(w, 'failed');
  assert.equal(e.status, 400);
  assert.equal(e.field, 'job');
  assert.equal(retried, false);
  assert.ok(w.logs.some((m) => m.startsWith('registration failed')), w.logs.join('\n'));
  const began = performance.now();
  await w.stop();
  assert.ok(performance.now() - began < 100);
});

// A worker whose application is done exits: neither the retries, nor the
// endpoint, nor the registration hold the process.
test('nothing of workersd keeps the process alive', { skip }, async (t) => {
  const agent = await startAgent();
  t.after(() => agent.stop('SIGKILL'));
  const script = `
    const workersd = require(${JSON.stringify(path.join(__dirname, '..'))});
    const w = new workersd.Worker({ job: 'node-exit', host: '127.0.0.1', exposition: () => 'x 1\\n' });
    // Held until the worker registered (or retried), then released.
    const hold = setInterval(() => {}, 1000);
    w.on('registered', () => { console.log('registered'); clearInterval(hold); });
    w.on('retry', (r) => { if (r.attempt === 3) { console.log('retrying'); clearInterval(hold); } });
    w.start();
  `;
  for (const [socket, want] of [
    [agent.socket, 'registered'],
    [path.join(tempDir(), 'none.sock'), 'retrying'],
  ]) {
    const child = spawn(process.execPath, ['-e', script], {
      env: { ...process.env, WORKERSD_AGENT_SOCKET: socket },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (out += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
    const [code, signal] = await once(child, 'exit');
    clearTimeout(timer);
    assert.equal(signal, null, `the process did not exit by itself within 5 s (${want}):\n${out}`);
    assert.equal(code, 0, out);
    assert.match(out, new RegExp(want));
  }
});

// README's worker without cluster: registered once started; on SIGTERM
// its final scrape shows the last count, then it deregisters and exits.
test('a worker without cluster stops with a final scrape', { skip }, async (t) => {
  const agent = await startAgent();
  t.after(() => agent.stop('SIGKILL'));
  const child = spawn(process.execPath, [path.join(__dirname, '..', 'test-support', 'standalone.js')], {
    env: { ...process.env, WORKERSD_AGENT_SOCKET: agent.socket, WORKERSD_METRICS_HOST: '127.0.0.1' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  t.after(() => child.kill('SIGKILL'));
  let out = '';
  let err = '';
  child.stdout.on('data', (d) => (out += d));
  child.stderr.on('data', (d) => (err += d));
  const exited = once(child, 'exit');
  let exitCode = null;
  child.on('exit', (code, signal) => (exitCode = code ?? signal));
  const lines = () => out.split('\n').filter(Boolean).map((l) => JSON.parse(l));

  const { port, path: metricsPath } = await until(10000, () => lines().find((l) => l.port), () => `no port:\n${err}`);
  await until(10000, async () => (await listed(agent.socket, child.pid)).length === 1, () => `not registered:\n${err}`);
  const reg = (await listed(agent.socket, child.pid))[0];
  assert.deepEqual(reg.labels, { version: '1.4.2' });
  assert.equal(reg.job, 'node-standalone');

  child.kill('SIGTERM');
  let last = '';
  await until(
    10000,
    async () => {
      if (lines().some((l) => 'jobs' in l)) return true;
      if (exitCode !== null) throw new Error(`the worker exited (${exitCode}) before it stopped:\n${err}`);
      last = (await fetchMetrics(port, metricsPath).catch(() => null)) ?? last;
      return false;
    },
    () => `the worker did not exit:\n${err}`,
  );
  const [code] = await exited;
  assert.equal(code, 0, err);
  const { jobs } = lines().find((l) => 'jobs' in l);
  assert.ok(jobs > 0);
  assert.equal(last, `# TYPE jobs_total counter\njobs_total ${jobs}\n`, 'the final scrape missed counts');
  assert.deepEqual(await listed(agent.socket, child.pid), []);
  assert.match(err, /workersd: deregistered pid/);
});

function fetchMetrics(port, path) {
  return new Promise((resolve, reject) => {
    http
      .get({ host: '127.0.0.1', port, path, agent: false }, (res) => {
        let body = '';
        res.on('data', (d) => (body += d));
        res.on('end', () => resolve(body));
      })
      .on('error', reject);
  });
}

// docs/CLIENTS.md: $WORKERSD_LABELS is "name=value,..."; an item that is
// not name=value, or a name given twice, is an error, never dropped.
test('labels come from WORKERSD_LABELS', () => {
  assert.deepEqual(workersd.labelsFromEnv(' team=core, tier = web ,'), { team: 'core', tier: 'web' });
  assert.deepEqual(workersd.labelsFromEnv(''), {});
  assert.deepEqual(workersd.labelsFromEnv('q=a=b'), { q: 'a=b' });
  assert.throws(() => workersd.labelsFromEnv('team=core,oops'), /WORKERSD_LABELS: "oops" is not name=value/);
  assert.throws(() => workersd.labelsFromEnv('=x'), /not name=value/);
  assert.throws(() => workersd.labelsFromEnv('a=1,a=2'), /given twice/);
});

test('the job comes from job or WORKERSD_JOB', () => {
  const saved = process.env.WORKERSD_JOB;
  try {
    delete process.env.WORKERSD_JOB;
    assert.throws(() => new workersd.Worker({ exposition: () => '' }), /WORKERSD_JOB/);
    process.env.WORKERSD_JOB = 'from-env';
    assert.equal(new workersd.Worker({ exposition: () => '' }).job, 'from-env');
    assert.equal(new workersd.Worker({ job: 'given', exposition: () => '' }).job, 'given');
  } finally {
    if (saved === undefined) delete process.env.WORKERSD_JOB;
    else process.env.WORKERSD_JOB = saved;
  }
});
