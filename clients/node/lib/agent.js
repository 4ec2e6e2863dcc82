'use strict';

// Client of the workersd host agent's API: JSON over HTTP on a Unix socket
// (docs/AGENT.md, "API").

const http = require('node:http');

const DEFAULT_SOCKET = '/run/workersd/agent.sock';

// The agent answered with an error status, or not at all (docs/CLIENTS.md).
// status: the HTTP status, null when the agent could not be reached (no
// socket, connection refused, timeout). error: the agent's own text (its
// answer's "error"), or why it could not be reached. field: the request
// field the agent named, null when none. code: the system's error code
// (ENOENT, ECONNREFUSED, ...) when unreachable.
class AgentError extends Error {
  constructor(status, error, field, code) {
    super(status === null ? `workersd agent unreachable: ${error}` : `workersd agent: ${status} ${error}`);
    this.name = 'AgentError';
    this.status = status;
    this.error = error;
    this.field = field || null;
    this.code = code || '';
  }

  // retryable: the same request may succeed later, as the agent is away
  // (no answer, or 503 while it starts or stops). Any other error is the
  // request's fault.
  get retryable() {
    return this.status === null || this.status === 503;
  }
}

// unreachable says why the socket did not answer, naming it: the system's
// message names it for some errors (ENOENT), not for others (a timeout).
function unreachable(opts, e) {
  const sock = socketPath(opts.socketPath);
  return e.message.includes(sock) ? e.message : `${sock}: ${e.message}`;
}

function socketPath(path) {
  return path || process.env.WORKERSD_AGENT_SOCKET || DEFAULT_SOCKET;
}

// call sends one request and resolves with the decoded answer. unref lets
// the process exit while the request is in flight (background retries
// must not hold a worker that is otherwise done).
function call(method, path, body, opts = {}) {
  const payload = body === undefined ? null : Buffer.from(JSON.stringify(body));
  const headers = { Connection: 'close' };
  if (payload) {
    headers['Content-Type'] = 'application/json';
    headers['Content-Length'] = payload.length;
  }
  return new Promise((resolve, reject) => {
    // agent: false: no pooled keep-alive socket left open after the answer.
    const req = http.request({ socketPath: socketPath(opts.socketPath), path, method, headers, agent: false }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('error', (e) => reject(new AgentError(null, unreachable(opts, e), null, e.code)));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        let answer = {};
        try {
          answer = text ? JSON.parse(text) : {};
        } catch {
          answer = { error: text.trim() };
        }
        if (res.statusCode >= 400) {
          reject(new AgentError(res.statusCode, answer.error || res.statusMessage, answer.field));
          return;
        }
        resolve(answer);
      });
    });
    req.setTimeout(opts.timeoutMs || 5000, () => req.destroy(Object.assign(new Error('timed out'), { code: 'ETIMEDOUT' })));
    req.on('error', (e) => reject(new AgentError(null, unreachable(opts, e), null, e.code)));
    if (opts.unref) req.on('socket', (s) => s.unref());
    req.end(payload);
  });
}

// register registers the process pid (default: this one) as a target of
// job serving metrics on port; resolves with the agent's view of it (id,
// state "registered" or "pending", key, slot). Errors are not retried here
// (Worker retries what is worth retrying).
function register({ job, port, address, pid = process.pid, labels, scheme, metricsPath }, opts = {}) {
  const body = { job, pid };
  if (address !== undefined) body.address = address;
  else body.port = port;
  if (labels && Object.keys(labels).length > 0) body.labels = labels;
  if (scheme) body.scheme = scheme;
  if (metricsPath) body.metrics_path = metricsPath;
  return call('POST', '/v1/workers', body, opts);
}

// deregister removes the registration of pid (default: this process) at
// once: the target leaves the file_sd file without waiting for the TTL.
function deregister(pid = process.pid, opts = {}) {
  return call('DELETE', `/v1/workers/${encodeURIComponent(pid)}`, undefined, opts);
}

// workers resolves with the agent's registrations (GET /v1/workers).
async function workers(opts = {}) {
  const answer = await call('GET', '/v1/workers', undefined, opts);
  return answer.workers || [];
}

// list is workers' name before docs/CLIENTS.md; deprecated.
const list = workers;

module.exports = { AgentError, DEFAULT_SOCKET, call, register, deregister, workers, list, socketPath };
