'use strict';

// The worker's own /metrics on an ephemeral port.

const crypto = require('node:crypto');
const http = require('node:http');
const { performance } = require('node:perf_hooks');
const { OPENMETRICS_CONTENT_TYPE, PROMETHEUS_CONTENT_TYPE, isOpenMetrics, toOpenMetrics, withCreated } = require('./exposition');

// The process' start in Unix seconds: every count of the worker happened
// after it, and so (the slot being held meanwhile) after every sample of
// the worker that had its slot before.
function processStartSeconds() {
  return performance.timeOrigin / 1000;
}

// ownMetricsPath is a metrics path only this process serves:
// /metrics/<pid>-<16 hex digits>. Workers register it instead of /metrics
// because their port is ephemeral: after a worker exits, Prometheus goes on
// scraping its address for seconds, and if another process, a new worker
// of the same job most likely, was given the port meanwhile, a scrape of
// /metrics would store that worker's counts under the old worker's
// instance and count them twice. A stale scrape of a path of its own gets
// a 404. (Go's registrar.OwnMetricsPath.)
function ownMetricsPath() {
  return `/metrics/${process.pid}-${crypto.randomBytes(8).toString('hex')}`;
}

class MetricsEndpoint {
  // exposition: () => string | Promise<string>, the metrics in the format
  // contentType names (prom-client: () => register.metrics(),
  // register.contentType). created: the created timestamp (Unix seconds)
  // given to series without one when serving OpenMetrics; false: none.
  // path: where Prometheus scrapes, ownMetricsPath() unless given; /metrics
  // answers too, for people, but does not count as the final scrape.
  constructor({ exposition, contentType = PROMETHEUS_CONTENT_TYPE, host, path = ownMetricsPath(), created } = {}) {
    if (typeof exposition !== 'function') throw new TypeError('workersd: exposition must be a function');
    this.exposition = exposition;
    this.contentType = contentType;
    this.host = host || process.env.WORKERSD_METRICS_HOST || '0.0.0.0';
    this.path = path;
    this.created = created === undefined ? processStartSeconds() : created;
    this.port = 0;
    this._exitBegan = null;
    this._finalScrapes = 0;
    this._waiters = new Set();
    this._server = http.createServer((req, res) => this._serve(req, res));
    // Neither the listener nor Prometheus' keep-alive connection may keep
    // a worker alive that is otherwise done; stop() holds it while it
    // waits for the final scrape.
    this._server.on('connection', (s) => s.unref());
  }

  // listen binds the port and resolves with it.
  listen() {
    return new Promise((resolve, reject) => {
      this._server.once('error', reject);
      // exclusive: in a cluster worker a plain listen(0) would share one
      // port, through the primary, among all workers; and
      // cluster.worker.disconnect() would close it before the final scrape.
      this._server.listen({ port: 0, host: this.host, exclusive: true }, () => {
        this._server.removeListener('error', reject);
        this._server.unref();
        this.port = this._server.address().port;
        resolve(this.port);
      });
    });
  }

  async _serve(req, res) {
    const began = performance.now();
    const url = req.url.split('?')[0];
    if (url !== this.path && url !== '/metrics') {
      res.writeHead(404, { 'Content-Type': 'text/plain' }).end('Not found; metrics are at /metrics\n');
      return;
    }
    const counted = url === this.path;
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { Allow: 'GET, HEAD' }).end();
      return;
    }
    let body;
    let type = this.contentType;
    try {
      body = String(await this.exposition());
      if (isOpenMetrics(type)) {
        if (this.created !== false) body = withCreated(body, this.created);
      } else if (this.created !== false && /application\/openmetrics-text/i.test(req.headers.accept || '')) {
        // Prometheus asks for OpenMetrics first: the only format that
        // carries created timestamps.
        body = withCreated(toOpenMetrics(body), this.created);
        type = OPENMETRICS_CONTENT_TYPE;
      }
    } catch (e) {
      res.writeHead(500, { 'Content-Type': 'text/plain' }).end(`workersd: exposition failed: ${e && e.message}\n`);
      return;
    }
    // Counted once fully handed to the kernel: what Prometheus receives.
    if (counted) res.on('finish', () => this._served(began));
    const buf = Buffer.from(body, 'utf8');
    res.writeHead(200, { 'Content-Type': type, 'Content-Length': buf.length });
    res.end(req.method === 'HEAD' ? undefined : buf);
  }

  _served(began) {
    if (this._exitBegan === null || began < this._exitBegan) return;
    this._finalScrapes++;
    for (const w of this._waiters) w(true);
  }

  // beginExit marks the moment the worker starts to exit: scrapes that
  // begin from then on see every count the worker made.
  beginExit() {
    if (this._exitBegan === null) this._exitBegan = performance.now();
  }

  // waitFinalScrape resolves true once a scrape that began after the
  // worker started to exit (beginExit, or this call) has been sent in
  // full, false after timeoutMs without one. Its timer keeps the process
  // alive while it waits.
  waitFinalScrape(timeoutMs) {
    this.beginExit();
    if (this._finalScrapes > 0) return Promise.resolve(true);
    return new Promise((resolve) => {
      const done = (ok) => {
        clearTimeout(timer);
        this._waiters.delete(done);
        resolve(ok);
      };
      const timer = setTimeout(() => done(false), timeoutMs);
      this._waiters.add(done);
    });
  }

  // close stops listening and drops open connections.
  close() {
    return new Promise((resolve) => {
      this._server.close(() => resolve());
      this._server.closeAllConnections();
    });
  }
}

module.exports = { MetricsEndpoint, ownMetricsPath, processStartSeconds };
