'use strict';

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const path = require('node:path');
const workersd = require('..');
const { skip, startAgent, tempDir } = require('../test-support/agent');

let agent;
before(async () => {
  if (!skip) agent = await startAgent();
});
after(async () => {
  if (agent) await agent.stop('SIGKILL');
});

test('register, list and deregister through a real agent', { skip }, async () => {
  const opts = { socketPath: agent.socket };
  const reg = await workersd.register({ job: 'node-client', port: 40123, labels: { version: '1.2' } }, opts);
  assert.equal(reg.pid, process.pid);
  assert.equal(reg.job, 'node-client');
  assert.equal(reg.state, 'registered');
  assert.ok(reg.slot >= 0, `slot ${reg.slot}`);
  assert.match(reg.address, /:40123$/);
  assert.deepEqual(reg.labels, { version: '1.2' });
  assert.ok(reg.key.startsWith(agent.prefix + 'node-client/test-host/'), reg.key);

  const listed = (await workersd.workers(opts)).filter((w) => w.pid === process.pid);
  assert.equal(listed.length, 1);
  assert.equal(listed[0].id, reg.id);
  assert.equal(workersd.list, workersd.workers, 'the deprecated name is the same function');

  // The same request again is idempotent: a retry is safe.
  const again = await workersd.register({ job: 'node-client', port: 40123, labels: { version: '1.2' } }, opts);
  assert.equal(again.id, reg.id);
  assert.equal(again.key, reg.key);

  const gone = await workersd.deregister(process.pid, opts);
  assert.equal(gone.state, 'deregistered');
  assert.deepEqual((await workersd.workers(opts)).filter((w) => w.pid === process.pid), []);
});

test('an error answer is an AgentError with the status, message and field', { skip }, async () => {
  const opts = { socketPath: agent.socket };
  await assert.rejects(workersd.register({ job: 'bad/job', port: 40124 }, opts), (e) => {
    assert.ok(e instanceof workersd.AgentError);
    assert.equal(e.status, 400);
    assert.equal(e.field, 'job');
    assert.match(e.error, /\//);
    assert.ok(e.message.includes(e.error), e.message);
    assert.equal(e.retryable, false);
    return true;
  });
  await assert.rejects(workersd.register({ job: 'node-client', port: 70000 }, opts), (e) => e.status === 400 && e.field === 'port');
  await assert.rejects(workersd.deregister(process.pid, opts), (e) => e.status === 404);
  assert.deepEqual((await workersd.workers(opts)).filter((w) => w.pid === process.pid), []);
});

test('no agent: AgentError with status null', async () => {
  const socketPath = path.join(tempDir(), 'none.sock');
  await assert.rejects(workersd.register({ job: 'node-client', port: 40125 }, { socketPath }), (e) => {
    assert.ok(e instanceof workersd.AgentError);
    assert.equal(e.status, null);
    assert.equal(e.code, 'ENOENT');
    assert.equal(e.retryable, true);
    assert.equal(e.field, null);
    assert.ok(e.error.includes(socketPath), e.error);
    return true;
  });
});

test('the socket comes from WORKERSD_AGENT_SOCKET', async () => {
  const socketPath = path.join(tempDir(), 'from-env.sock');
  const saved = process.env.WORKERSD_AGENT_SOCKET;
  process.env.WORKERSD_AGENT_SOCKET = socketPath;
  try {
    await assert.rejects(workersd.workers(), (e) => e.status === null && e.message.includes(socketPath));
  } finally {
    if (saved === undefined) delete process.env.WORKERSD_AGENT_SOCKET;
    else process.env.WORKERSD_AGENT_SOCKET = saved;
  }
});
