'use strict';

// Node's cluster module with workersd: setupWorker in each worker,
// runPrimary (or the same few lines of one's own) in the primary.
//
// A worker that exits gracefully waits for a final scrape, for up to a
// scrape interval or Prometheus' discovery delay. If the primary forked
// its replacement only on 'exit', the cluster would serve with one worker
// less meanwhile, and once every worker is stopping at the same time (they
// reach a max-requests limit together under round-robin) the primary
// closes the listening socket: connections are refused. So a worker
// recycles by handing over: it asks the primary for a replacement and
// stops accepting only once that one listens.

const cluster = require('node:cluster');
const os = require('node:os');
const { Worker } = require('./worker');

const RECYCLE = 'workersd:recycle';

function log(msg) {
  process.stderr.write(`workersd: ${msg}\n`);
}

// setupWorker, in a cluster worker, starts a Worker (its endpoint, and its
// registration in the background) and installs the graceful exit: on
// SIGTERM or SIGINT, on the primary's worker.disconnect() or kill() (a
// 'disconnect', then SIGTERM), or on worker.exit(): stop accepting (the
// cluster closes the worker's servers and waits for their connections),
// let Prometheus scrape once more, deregister, exit. Outside a cluster
// worker it returns null.
//
// opts: those of Worker, and register (a prom-client Registry, whose
// metrics() and contentType make the exposition unless exposition is
// given), exit (default true: process.exit(exitCode) once stopped; false:
// the process ends when nothing else holds it), signals (default
// ['SIGTERM', 'SIGINT']), recycleTimeoutMs (see recycle; default 10 s).
function setupWorker(opts = {}) {
  if (!cluster.isWorker) return null;
  const { register, exit = true, signals = ['SIGTERM', 'SIGINT'], recycleTimeoutMs = 10000, ...rest } = opts;
  if (!rest.exposition) {
    if (!register || typeof register.metrics !== 'function') {
      throw new TypeError('workersd: setupWorker needs register (a prom-client Registry) or exposition');
    }
    rest.exposition = () => register.metrics();
    rest.contentType = rest.contentType || register.contentType;
  }
  const worker = new Worker(rest);
  const started = worker.start().catch((e) => worker.log(`metrics endpoint failed (pid ${process.pid}): ${e.message}`));

  let exiting = null;
  worker.exit = (exitCode = 0) => {
    if (!exiting) {
      exiting = (async () => {
        await started;
        const me = cluster.worker;
        if (me.isConnected()) {
          const disconnected = new Promise((resolve) => me.once('disconnect', resolve));
          me.disconnect();
          await disconnected;
        }
        await worker.stop();
        if (exit) process.exit(exitCode);
      })();
    }
    return exiting;
  };

  // recycle (after max requests, say) asks the primary (runPrimary) for a
  // replacement; the primary disconnects this worker once the replacement
  // listens, which starts the graceful exit. Without that within
  // recycleTimeoutMs (a primary that does not know the message), the
  // worker exits by itself.
  let recycling = false;
  worker.recycle = () => {
    if (recycling || exiting) return;
    recycling = true;
    if (!cluster.worker.isConnected()) {
      worker.exit(0);
      return;
    }
    process.send({ type: RECYCLE, pid: process.pid });
    setTimeout(() => worker.exit(0), recycleTimeoutMs).unref();
  };

  for (const sig of signals) process.on(sig, () => worker.exit(0));
  cluster.worker.on('disconnect', () => worker.exit(0));
  // An answer to the primary sent after the channel closed (prom-client's
  // AggregatorRegistry answers a metrics request that arrived just before
  // the disconnect, with no callback) is emitted here; unhandled, it would
  // kill the worker while it waits for its final scrape.
  cluster.worker.on('error', (e) => {
    if (!e || e.code !== 'ERR_IPC_CHANNEL_CLOSED') throw e;
  });
  return worker;
}

// runPrimary, in the primary, forks workers (default: one per CPU), forks
// a replacement for each that exits, hands a recycling worker over to its
// replacement, and on SIGTERM or SIGINT stops every worker gracefully and
// exits once they all have (exit: false: it does not exit). Outside the
// primary it returns null. It returns {stop}.
function runPrimary({ workers = os.availableParallelism(), signals = ['SIGTERM', 'SIGINT'], exit = true, log: logf = log } = {}) {
  if (!cluster.isPrimary) return null;
  let stopping = false;
  const live = new Set();
  // Workers that asked to recycle: their replacements are forked and
  // serve in their stead, so their exit forks nothing.
  const retiring = new Set();
  const relieves = new Map(); // replacement id -> the retiring worker, until it listens

  const fork = (old) => {
    const w = cluster.fork();
    live.add(w.id);
    if (old) {
      relieves.set(w.id, old);
      w.once('listening', () => {
        relieves.delete(w.id);
        if (old.isConnected()) old.disconnect();
      });
    }
    return w;
  };

  cluster.on('message', (w, msg) => {
    if (!msg || msg.type !== RECYCLE || stopping || retiring.has(w.id) || !live.has(w.id)) return;
    retiring.add(w.id);
    fork(w);
  });

  cluster.on('exit', (w, code, signal) => {
    live.delete(w.id);
    const wasRetiring = retiring.delete(w.id);
    const old = relieves.get(w.id);
    relieves.delete(w.id);
    if (stopping) {
      if (live.size === 0 && exit) process.exit(0);
      return;
    }
    if (wasRetiring) return;
    logf(`worker ${w.process.pid} exited (${signal || code}); forking a replacement`);
    // A replacement that died before it listened passes on the worker it
    // was to relieve.
    fork(old && old.isConnected() ? old : null);
  });

  const stop = () => {
    if (stopping) return;
    stopping = true;
    if (live.size === 0 && exit) process.exit(0);
    for (const w of Object.values(cluster.workers)) {
      if (w.isConnected()) w.disconnect();
    }
  };
  for (const sig of signals) process.on(sig, stop);
  for (let i = 0; i < workers; i++) fork(null);
  return { stop };
}

module.exports = { setupWorker, runPrimary, RECYCLE };
