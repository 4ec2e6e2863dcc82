'use strict';

// workersd for Node: every cluster worker its own Prometheus target. A
// worker serves its metrics on an ephemeral port and registers with the
// host's workersd-agent over its Unix socket (docs/AGENT.md).

const agent = require('./lib/agent');
const { MetricsEndpoint, ownMetricsPath, processStartSeconds } = require('./lib/endpoint');
const { Worker, labelsFromEnv } = require('./lib/worker');
const exposition = require('./lib/exposition');
const cluster = require('./lib/cluster');

module.exports = {
  AgentError: agent.AgentError,
  register: agent.register,
  deregister: agent.deregister,
  workers: agent.workers,
  list: agent.list, // deprecated: workers
  MetricsEndpoint,
  Worker,
  labelsFromEnv,
  ownMetricsPath,
  withCreated: exposition.withCreated,
  toOpenMetrics: exposition.toOpenMetrics,
  OPENMETRICS_CONTENT_TYPE: exposition.OPENMETRICS_CONTENT_TYPE,
  PROMETHEUS_CONTENT_TYPE: exposition.PROMETHEUS_CONTENT_TYPE,
  processStartSeconds,
  cluster,
};
