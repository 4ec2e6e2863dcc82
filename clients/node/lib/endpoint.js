'use strict';

// The worker's own /metrics on an ephemeral port.

const crypto = require('node:crypto');
const fs = require('node:fs');
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

// A final scrape counts only once the scraper has received its whole answer
// in time: handing it to the kernel is not enough, a scraper cut off from
// the worker (a link cut or slowed just then) times out and stores nothing
// (docs/SOAK.md, "a final scrape that never arrived"). While the worker
// exits, a scrape of its path counts once the kernel reports every byte of
// the answer acknowledged by the peer before the request's start plus the
// timeout Prometheus sends (X-Prometheus-Scrape-Timeout-Seconds) less a
// margin. Node has no ioctl(SIOCOUTQ) as the Go worker and the Python and
// Ruby clients use; the kernel says the same in /proc/net/tcp{,6}: each
// connection's state and tx_queue. Where it does not (not Linux), a written
// answer counts.
const DEFAULT_SCRAPE_TIMEOUT_MS = 10000; // Prometheus' default
const PROC_NET_TCP = ['/proc/net/tcp', '/proc/net/tcp6'];
// States of /proc/net/tcp whose tx_queue is the data not yet acknowledged;
// FIN_WAIT2 and TIME_WAIT: our FIN, after every byte, was acknowledged.
const TCP_WAITING = new Set([0x01, 0x04, 0x08, 0x09, 0x0b]); // ESTABLISHED, FIN_WAIT1, CLOSE_WAIT, LAST_ACK, CLOSING
const TCP_ACKED = new Set([0x05, 0x06]); // FIN_WAIT2, TIME_WAIT

function scrapeDeadline(req, began) {
  let timeout = Number(req.headers['x-prometheus-scrape-timeout-seconds']) * 1000;
  if (!(timeout > 0 && timeout < 1e9)) timeout = DEFAULT_SCRAPE_TIMEOUT_MS;
  return began + timeout - Math.min(timeout / 10, 500);
}

// unacked returns the bytes the peer of the connection between localPort
// and remotePort has not acknowledged, -1 once there is no such connection
// (a reset removes it), null when the kernel does not say.
function unacked(localPort, remotePort) {
  if (process.platform !== 'linux' || !localPort || !remotePort) return null;
  const hex = (p) => ':' + p.toString(16).toUpperCase().padStart(4, '0');
  const local = hex(localPort);
  const remote = hex(remotePort);
  let readable = false;
  for (const file of PROC_NET_TCP) {
    let text;
    try {
      text = fs.readFileSync(file, 'latin1');
    } catch {
      continue;
    }
    readable = true;
    for (const line of text.split('\n')) {
      const f = line.trim().split(/\s+/);
      if (f.length < 5 || !f[1].endsWith(local) || !f[2].endsWith(remote)) continue;
      const state = parseInt(f[3], 16);
      if (TCP_ACKED.has(state)) return 0;
      if (!TCP_WAITING.has(state)) continue;
      return parseInt(f[4].split(':')[0], 16);
    }
  }
  return readable ? -1 : null;
}

// delivered resolves whether the peer acknowledged everything written on
// the connection by deadline (performance.now() milliseconds).
async function delivered(localPort, remotePort, deadline) {
  for (;;) {
    const n = unacked(localPort, remotePort);
    if (n === null || n === 0) return true;
    if (n < 0 || performance.now() >= deadline) return false;
    await new Promise((r) => setTimeout(r, 5));
  }
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
    // Scrapes after the exit began whose answer the scraper did not
    // receive in time: none of them is the final scrape.
    this.undeliveredScrapes = 0;
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
    // Only Prometheus' scrapes of the worker's own path carry its counts
    // away, and one that began after the exit began is the final scrape
    // once the scraper has received all of it in time.
    if (counted && this._exitBegan !== null) this._settleFinal(req, res, began);
    const buf = Buffer.from(body, 'utf8');
    res.writeHead(200, { 'Content-Type': type, 'Content-Length': buf.length });
    res.end(req.method === 'HEAD' ? undefined : buf);
  }

  _settleFinal(req, res, began) {
    const { localPort, remotePort } = req.socket;
    const deadline = scrapeDeadline(req, began);
    let settled = false;
    const settle = (ok) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      if (ok) this._served(began);
      else this.undeliveredScrapes++;
    };
    // A scraper that stops reading never lets the answer finish.
    const timer = setTimeout(() => settle(false), Math.max(deadline - performance.now(), 0));
    timer.unref();
    res.on('finish', async () => settle(await delivered(localPort, remotePort, deadline)));
    res.on('close', () => {
      if (!res.writableFinished) settle(false);
    });
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
  // worker started to exit (beginExit, or this call) has been received in
  // full by the scraper in time, false after timeoutMs without one. Its
  // timer keeps the process alive while it waits.
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
