'use strict';

// A Node cluster in which every worker is its own Prometheus target.
//
// The primary forks the workers and a replacement for each that exits
// (workersd.cluster.runPrimary). Each worker serves HTTP on the shared
// port, counts in its own prom-client registry, serves it on an ephemeral
// port and registers with the host's workersd-agent
// (workersd.cluster.setupWorker); after NODE_MAX_REQUESTS requests it
// recycles itself as gunicorn's max_requests does: once its replacement
// listens, it stops accepting, waits for Prometheus to scrape it once
// more, deregisters and exits.
//
// For comparison, the primary also serves prom-client's AggregatorRegistry
// (the cluster's metrics summed over the live workers, prom-client's
// documented way) on NODE_AGGREGATOR_BIND.
//
//   NODE_BIND                      127.0.0.1:8000
//   NODE_WORKERS                   4
//   NODE_MAX_REQUESTS              0 (never recycle)
//   NODE_AGGREGATOR_BIND           host:port of /cluster_metrics; empty: none
//   WORKERSD_JOB                   node-demo
//   WORKERSD_LABELS                extra target labels, "k=v,k2=v2"
//   WORKERSD_METRICS_HOST          address the metrics endpoints bind, 0.0.0.0
//   WORKERSD_AGENT_SOCKET          /run/workersd/agent.sock
//   WORKERSD_FINAL_SCRAPE_TIMEOUT  seconds, 15

const cluster = require('node:cluster');
const http = require('node:http');
const client = require('prom-client');
const workersd = require('workersd');

const WORKERS = Number(process.env.NODE_WORKERS || 4);
const MAX_REQUESTS = Number(process.env.NODE_MAX_REQUESTS || 0);
const JOB = process.env.WORKERSD_JOB || 'node-demo';
const LABELS = Object.fromEntries(
  (process.env.WORKERSD_LABELS || '')
    .split(',')
    .filter((kv) => kv.includes('='))
    .map((kv) => [kv.slice(0, kv.indexOf('=')), kv.slice(kv.indexOf('=') + 1)]),
);

function hostPort(s) {
  const i = s.lastIndexOf(':');
  return [s.slice(0, i).replace(/^\[|\]$/g, ''), Number(s.slice(i + 1))];
}

// In the primary it asks the workers for their metrics; in a worker,
// creating it is what makes the worker answer.
const aggregatorRegistry = new client.AggregatorRegistry();

if (cluster.isPrimary) {
  // Forks the workers, forks a replacement for each that exits, hands a
  // recycling worker over to its replacement (the cluster never stops
  // accepting), stops them all gracefully on SIGTERM or SIGINT.
  workersd.cluster.runPrimary({ workers: WORKERS });
  serveAggregator();
} else {
  worker();
}

// serveAggregator serves, in the primary, the sum of the live workers'
// metrics: what prom-client documents for a cluster.
function serveAggregator() {
  if (!process.env.NODE_AGGREGATOR_BIND) return;
  const [host, port] = hostPort(process.env.NODE_AGGREGATOR_BIND);
  http
    .createServer(async (req, res) => {
      if (req.url !== '/cluster_metrics') {
        res.writeHead(404).end();
        return;
      }
      try {
        const body = await aggregatorRegistry.clusterMetrics();
        res.writeHead(200, { 'Content-Type': aggregatorRegistry.contentType }).end(body);
      } catch (e) {
        res.writeHead(500, { 'Content-Type': 'text/plain' }).end(`${e.message}\n`);
      }
    })
    .listen(port, host);
}

function worker() {
  // Created in the worker, so each lifetime counts from 0 and the series'
  // created timestamps (the worker's start) are its own.
  client.collectDefaultMetrics();
  const requests = new client.Counter({ name: 'app_requests_total', help: 'HTTP requests served.' });
  const responses = new client.Counter({
    name: 'app_responses_total',
    help: 'HTTP responses by status code.',
    labelNames: ['code'],
  });

  const w = workersd.cluster.setupWorker({ job: JOB, labels: LABELS, register: client.register });

  let served = 0;
  const server = http.createServer((req, res) => {
    const code = req.url === '/' ? 200 : 404;
    requests.inc();
    responses.inc({ code: String(code) });
    served++;
    const recycle = MAX_REQUESTS > 0 && served >= MAX_REQUESTS;
    // The last responses close their connections, so that the server's
    // close (the cluster's disconnect) does not wait for idle keep-alives.
    res.writeHead(code, { 'Content-Type': 'text/plain', ...(recycle ? { Connection: 'close' } : {}) });
    res.end(code === 200 ? `hello from ${process.pid}\n` : 'not found\n');
    if (recycle && served === MAX_REQUESTS) {
      console.log(`worker ${process.pid}: recycling after ${served} requests`);
      w.recycle();
    }
  });
  const [host, port] = hostPort(process.env.NODE_BIND || '127.0.0.1:8000');
  server.listen(port, host);
}
