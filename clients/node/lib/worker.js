'use strict';

// A worker's part in workersd: its metrics endpoint, its registration with
// the host agent (in the background, retried while the agent is away), and
// a graceful stop that lets Prometheus scrape once more before the target
// goes.

const { EventEmitter } = require('node:events');
const agent = require('./agent');
const { MetricsEndpoint } = require('./endpoint');

function log(msg) {
  process.stderr.write(`workersd: ${msg}\n`);
}

// labelsFromEnv parses "name=value,name2=value2" ($WORKERSD_LABELS by
// default) into an object (docs/CLIENTS.md): white space around names and
// values is stripped, empty items are skipped; an item without "=" or a
// name, or a name given twice, throws a TypeError naming it, since dropping
// it would register the worker without a label its user asked for.
function labelsFromEnv(value = process.env.WORKERSD_LABELS || '') {
  const out = {};
  for (const item of value.split(',')) {
    if (item.trim() === '') continue;
    const eq = item.indexOf('=');
    const name = eq < 0 ? '' : item.slice(0, eq).trim();
    if (name === '') throw new TypeError(`workersd: WORKERSD_LABELS: ${JSON.stringify(item.trim())} is not name=value`);
    if (Object.prototype.hasOwnProperty.call(out, name)) {
      throw new TypeError(`workersd: WORKERSD_LABELS: label ${JSON.stringify(name)} is given twice`);
    }
    out[name] = item.slice(eq + 1).trim();
  }
  return out;
}

// envSeconds is $name as a number of seconds >= 0, fallback when unset or
// empty; any other value throws a TypeError naming the variable
// (docs/CLIENTS.md).
function envSeconds(name, fallback) {
  const raw = (process.env[name] || '').trim();
  if (raw === '') return fallback;
  const v = Number(raw);
  if (!(Number.isFinite(v) && v >= 0)) throw new TypeError(`workersd: ${name}: ${JSON.stringify(raw)} is not a number of seconds >= 0`);
  return v;
}

// Worker emits 'registered' (the agent's answer), 'retry' ({attempt,
// error, delayMs}) and 'failed' (the AgentError it gave up on).
class Worker extends EventEmitter {
  // job (default $WORKERSD_JOB; one or the other is required), labels
  // (default $WORKERSD_LABELS, see labelsFromEnv), exposition and contentType (see
  // MetricsEndpoint), host (of the endpoint), socketPath (of the agent),
  // finalScrapeTimeoutMs (default $WORKERSD_FINAL_SCRAPE_TIMEOUT seconds,
  // else 15 s: above Prometheus' 5 s discovery delay plus a scrape
  // interval, for a worker that exits before its first scrape),
  // backoffMinMs and backoffMaxMs (100 ms doubling to 1 s), created (see
  // MetricsEndpoint), log (a function of one string; default: stderr).
  constructor(opts = {}) {
    super();
    this.job = opts.job || process.env.WORKERSD_JOB;
    if (!this.job) throw new TypeError('workersd: no job: pass job or set WORKERSD_JOB');
    this.labels = opts.labels ?? labelsFromEnv();
    this.socketPath = agent.socketPath(opts.socketPath);
    this.finalScrapeTimeoutMs = opts.finalScrapeTimeoutMs ?? envSeconds('WORKERSD_FINAL_SCRAPE_TIMEOUT', 15) * 1000;
    this.backoffMinMs = opts.backoffMinMs ?? 100;
    this.backoffMaxMs = opts.backoffMaxMs ?? 1000;
    this.log = opts.log || log;
    this.endpoint = new MetricsEndpoint({
      exposition: opts.exposition,
      contentType: opts.contentType,
      host: opts.host,
      created: opts.created,
    });
    this.registration = null; // the agent's answer, once registered
    this._stopping = false;
    this._loop = null;
    this._sleep = null; // the pending backoff: {timer, resolve}
    this._stopped = null;
  }

  get port() {
    return this.endpoint.port;
  }

  // metricsPath is the path registered for Prometheus, this process' own.
  get metricsPath() {
    return this.endpoint.path;
  }

  get registered() {
    return this.registration !== null;
  }

  // start listens and resolves with the port at once; registration goes
  // on in the background, so an absent agent never delays the worker.
  async start() {
    if (this._loop) return this.port;
    await this.endpoint.listen();
    this._loop = this._register();
    return this.port;
  }

  async _register() {
    let delay = this.backoffMinMs;
    let warned = false;
    for (let attempt = 1; !this._stopping; attempt++) {
      try {
        const reg = await agent.register(
          { job: this.job, port: this.port, labels: this.labels, metricsPath: this.endpoint.path },
          { socketPath: this.socketPath, unref: true },
        );
        this.registration = reg;
        this.log(`registered pid ${process.pid} port ${this.port}: job ${this.job} slot ${reg.slot} ${reg.state} ${reg.key || ''}`.trimEnd());
        this.emit('registered', reg);
        return;
      } catch (e) {
        if (!(e instanceof agent.AgentError) || !e.retryable) {
          this.log(`registration failed, not retrying (pid ${process.pid}): ${e.message}`);
          this.emit('failed', e);
          return;
        }
        if (!warned) {
          warned = true;
          this.log(`agent unreachable (pid ${process.pid}): ${e.message}; retrying until it answers`);
        }
        this.emit('retry', { attempt, error: e, delayMs: delay });
        await this._wait(delay);
        delay = Math.min(delay * 2, this.backoffMaxMs);
      }
    }
  }

  // _wait sleeps without holding the process; stop() cuts it short.
  _wait(ms) {
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this._sleep = null;
        resolve();
      }, ms);
      timer.unref();
      this._sleep = { timer, resolve };
    });
  }

  // stop ends the retries; if the worker registered, waits (at most
  // finalScrapeTimeoutMs) for a scrape that begins after this call, so
  // Prometheus has every count, then deregisters. Unregistered, it returns
  // at once. Call it once the worker no longer counts (its server closed).
  stop() {
    if (!this._stopped) this._stopped = this._stop();
    return this._stopped;
  }

  async _stop() {
    // Held until done: the registration in flight, the wait and the DELETE
    // must not be cut short by a process that has nothing else to do.
    const hold = setInterval(() => {}, 1 << 30);
    try {
      await this._stopNow();
    } finally {
      clearInterval(hold);
    }
  }

  async _stopNow() {
    this.endpoint.beginExit();
    this._stopping = true;
    if (this._sleep) {
      clearTimeout(this._sleep.timer);
      this._sleep.resolve();
    }
    // A request in flight settles within its timeout (the agent answers
    // within about 500 ms); its registration must be undone if it took.
    if (this._loop) await this._loop;
    if (this.registered) {
      const ok = await this.endpoint.waitFinalScrape(this.finalScrapeTimeoutMs);
      if (!ok) this.log(`no final scrape of pid ${process.pid} within ${this.finalScrapeTimeoutMs / 1000}s; its last counts may be lost`);
      try {
        await agent.deregister(process.pid, { socketPath: this.socketPath });
        this.log(`deregistered pid ${process.pid}`);
      } catch (e) {
        // The agent revokes the registration when this process exits anyway.
        this.log(`deregistration failed (pid ${process.pid}): ${e.message}`);
      }
    }
    await this.endpoint.close();
  }
}

module.exports = { Worker, labelsFromEnv };
