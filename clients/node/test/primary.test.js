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

function get(port, p) {
  return new Promise((resolve, reject) => {
    http
      .get({ host: '127.0.0.1', port, path: p, agent: false }, (res) => {
        let body = '';
        res.on('data', (d) => (body += d));
        res.on('end', () => resolve({ status: res.statusCode, body }));
      })
      .on('error', reject);
  });
}

function freePort() {
  return new Promise((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

// The primary (runPrimary, or README's lines of one's own) hands a
// recycling worker over to its replacement: the replacement registers and
// serves while the old worker, no longer accepting, is still registered
// until its final scrape; a killed worker is replaced; SIGTERM stops the
// cluster gracefully.
for (const primaryKind of ['runPrimary', 'manual']) {
  test(`${primaryKind}: recycle hand-over, respawn, graceful stop`, { skip }, async (t) => {
    const agent = await startAgent();
    t.after(() => agent.stop('SIGKILL'));
    const appPort = await freePort();
    const primary = spawn(process.execPath, [path.join(__dirname, '..', 'test-support', 'primary-app.js')], {
      env: { ...process.env, WORKERSD_AGENT_SOCKET: agent.socket, APP_PORT: String(appPort), WORKERS: '1', PRIMARY: primaryKind },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stderr = '';
    primary.stderr.on('data', (d) => (stderr += d));
    const lines = [];
    readline.createInterface({ input: primary.stdout }).on('line', (l) => lines.push(JSON.parse(l)));
    const exited = new Promise((resolve) => primary.on('exit', resolve));
    t.after(() => primary.kill('SIGKILL'));
    const workers = () => lines.filter((l) => l.pid);
    const registered = async () => (await workersd.workers({ socketPath: agent.socket })).map((w) => w.pid).sort();

    const a = await until(10000, () => workers()[0], () => `no worker registered:\n${stderr}`);
    assert.equal((await get(appPort, '/')).body, `${a.pid}\n`);

    // Recycle: the replacement registers and serves; the old worker stays
    // registered until it has been scraped once more.
    await get(appPort, '/recycle');
    const b = await until(10000, () => workers()[1], () => `no replacement:\n${stderr}`);
    await until(10000, async () => (await get(appPort, '/')).body === `${b.pid}\n`, 'the replacement does not serve');
    assert.deepEqual(await registered(), [a.pid, b.pid].sort());
    await until(15000, async () => {
      await get(a.metrics, a.path).catch(() => {});
      return (await registered()).length === 1;
    }, () => `the recycled worker did not deregister:\n${stderr}`);
    assert.deepEqual(await registered(), [b.pid]);

    // kill -9: replaced.
    process.kill(b.pid, 'SIGKILL');
    const c = await until(10000, () => workers()[2], () => `no replacement for the killed worker:\n${stderr}`);
    assert.equal((await get(appPort, '/')).body, `${c.pid}\n`);
    if (primaryKind === 'runPrimary') {
      assert.match(stderr, new RegExp(`workersd: worker ${b.pid} exited \\(SIGKILL\\); forking a replacement`));
    }

    // SIGTERM: the worker stops after a final scrape, then the primary exits.
    primary.kill('SIGTERM');
    await until(15000, async () => {
      if (lines.some((l) => 'primaryExit' in l)) return true;
      await get(c.metrics, c.path).catch(() => {});
      return false;
    }, () => `the primary did not exit:\n${stderr}`);
    assert.equal(await exited, 0);
    assert.deepEqual(await registered(), []);
    assert.equal(workers().length, 3, JSON.stringify(lines));
    assert.doesNotMatch(stderr, /no final scrape|Error/);
  });
}
