'use strict';

// A cluster of one worker using workersd.cluster.setupWorker, for
// test/cluster.test.js. The primary prints JSON lines: the worker's ports
// once it registered, and its exit. SIGTERM makes the primary call
// worker.disconnect(), SIGUSR2 worker.kill().

const cluster = require('node:cluster');
const http = require('node:http');
const workersd = require('..');

if (cluster.isPrimary) {
  const worker = cluster.fork();
  worker.on('message', (m) => process.stdout.write(JSON.stringify(m) + '\n'));
  process.on('SIGTERM', () => worker.disconnect());
  process.on('SIGUSR2', () => worker.kill());
  worker.on('exit', (code, signal) => {
    process.stdout.write(JSON.stringify({ exit: code, signal }) + '\n');
    process.exit(0);
  });
} else {
  const w = workersd.cluster.setupWorker({
    job: 'node-cluster',
    host: '127.0.0.1',
    exposition: () => '# TYPE served_total counter\nserved_total 1\n',
    finalScrapeTimeoutMs: 20000,
  });
  // What prom-client's AggregatorRegistry does when the primary's metrics
  // request crosses the disconnect: it answers on the closed channel.
  cluster.worker.on('disconnect', () => process.send({ late: true }));
  const app = http.createServer((req, res) => res.end('ok\n'));
  app.listen(0, '127.0.0.1', () => {
    w.once('registered', (reg) => process.send({ pid: process.pid, app: app.address().port, metrics: w.port, path: w.metricsPath, key: reg.key }));
  });
}
