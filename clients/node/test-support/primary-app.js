'use strict';

// A cluster for test/primary.test.js, its primary either
// workersd.cluster.runPrimary or the same written out (PRIMARY=manual, as
// README.md shows it). Workers recycle on GET /recycle. The primary prints
// JSON lines: each worker's ports once it registered, and its own exit.

const cluster = require('node:cluster');
const http = require('node:http');
const workersd = require('..');

const n = Number(process.env.WORKERS || 1);

if (cluster.isPrimary) {
  if (process.env.PRIMARY === 'manual') manualPrimary();
  else workersd.cluster.runPrimary({ workers: n });
  cluster.on('message', (w, m) => {
    if (m && m.metrics) process.stdout.write(JSON.stringify(m) + '\n');
  });
  process.on('exit', (code) => process.stdout.write(JSON.stringify({ primaryExit: code }) + '\n'));
} else {
  const w = workersd.cluster.setupWorker({
    job: 'node-primary',
    host: '127.0.0.1',
    exposition: () => '# TYPE served_total counter\nserved_total 1\n',
    finalScrapeTimeoutMs: 20000,
  });
  const app = http.createServer((req, res) => {
    res.end(`${process.pid}\n`);
    if (req.url === '/recycle') w.recycle();
  });
  app.listen(Number(process.env.APP_PORT), '127.0.0.1', () => {
    w.once('registered', () => process.send({ pid: process.pid, metrics: w.port, path: w.metricsPath }));
  });
}

function manualPrimary() {
  let stopping = false;
  for (let i = 0; i < n; i++) cluster.fork();
  cluster.on('message', (w, m) => {
    if (m && m.type === 'workersd:recycle' && !w.retiring) {
      w.retiring = true; // its replacement serves in its stead
      cluster.fork().once('listening', () => w.isConnected() && w.disconnect());
    }
  });
  cluster.on('exit', (w) => {
    if (!stopping && !w.retiring) cluster.fork();
    if (stopping && Object.keys(cluster.workers).length === 0) process.exit(0);
  });
  process.on('SIGTERM', () => {
    stopping = true;
    for (const w of Object.values(cluster.workers)) w.disconnect();
  });
}
