'use strict';

// A worker without cluster, for test/worker.test.js (README.md shows it):
// it counts jobs, serves the count through a workersd.Worker, and on
// SIGTERM stops counting, stops the Worker (final scrape, deregistration)
// and exits. It prints its port, and its final count.

const workersd = require('..');

let jobs = 0;
const timer = setInterval(() => jobs++, 5);

const w = new workersd.Worker({
  job: 'node-standalone',
  labels: { version: '1.4.2' },
  exposition: () => `# TYPE jobs_total counter\njobs_total ${jobs}\n`, // or () => register.metrics()
});
w.start().then((port) => console.log(JSON.stringify({ port, path: w.metricsPath })));

process.on('SIGTERM', async () => {
  clearInterval(timer); // nothing counts any more
  await w.stop(); // waits for a final scrape if it registered, then DELETEs
  console.log(JSON.stringify({ jobs }));
  process.exit(0);
});
