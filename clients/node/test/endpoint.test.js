'use strict';

const { test } = require('node:test');
const assert = require('node:assert/strict');
const http = require('node:http');
const { spawn } = require('node:child_process');
const workersd = require('..');
const { ownMetricsPath } = require('../lib/endpoint');

// get fetches a path of the endpoint; resolves once the body is complete.
function get(port, path = '/metrics', headers = {}) {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port, path, headers, agent: false }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode, type: res.headers['content-type'], body }));
    });
    req.on('error', reject);
  });
}

// turns lets pending callbacks (a resolved waiter's .then) run.
async function turns(n = 5) {
  for (let i = 0; i < n; i++) await new Promise((r) => setImmediate(r));
}

const TEXT = `# HELP app_requests_total Requests.
# TYPE app_requests_total counter
app_requests_total 3

# HELP app_up Up.
# TYPE app_up gauge
app_up 1
`;

async function endpoint(opts) {
  const e = new workersd.MetricsEndpoint({ host: '127.0.0.1', ...opts });
  await e.listen();
  return e;
}

test('serves the exposition as it is, OpenMetrics with created timestamps when asked', async (t) => {
  const e = await endpoint({ exposition: () => TEXT, created: 1700000000.25 });
  t.after(() => e.close());
  assert.ok(e.port > 0);

  const plain = await get(e.port);
  assert.equal(plain.status, 200);
  assert.equal(plain.type, workersd.PROMETHEUS_CONTENT_TYPE);
  assert.equal(plain.body, TEXT);

  // What Prometheus 3 sends.
  const accept = 'application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.3,text/plain;version=0.0.4;q=0.2,*/*;q=0.1';
  const om = await get(e.port, '/metrics', { accept });
  assert.equal(om.type, workersd.OPENMETRICS_CONTENT_TYPE);
  assert.equal(
    om.body,
    `# HELP app_requests Requests.
# TYPE app_requests counter
app_requests_total 3
app_requests_created 1700000000.250
# HELP app_up Up.
# TYPE app_up gauge
app_up 1
# EOF
`,
  );

  assert.equal((await get(e.port, '/other')).status, 404);
  // A path of its own: another worker's (a stale scrape of a port this
  // one was given) is a 404, its own and /metrics answer.
  assert.match(e.path, new RegExp(`^/metrics/${process.pid}-[0-9a-f]{16}$`));
  assert.equal((await get(e.port, ownMetricsPath())).status, 404);
  assert.equal((await get(e.port, e.path)).status, 200);
});

test('an OpenMetrics exposition gets created timestamps whatever the scraper asks', async (t) => {
  const text = '# TYPE x counter\nx_total 1\n# EOF\n';
  const e = await endpoint({ exposition: async () => text, contentType: workersd.OPENMETRICS_CONTENT_TYPE, created: 10 });
  t.after(() => e.close());
  const r = await get(e.port);
  assert.equal(r.type, workersd.OPENMETRICS_CONTENT_TYPE);
  assert.equal(r.body, '# TYPE x counter\nx_total 1\nx_created 10.000\n# EOF\n');
});

test('created: false serves the exposition unchanged', async (t) => {
  const e = await endpoint({ exposition: () => TEXT, created: false });
  t.after(() => e.close());
  const r = await get(e.port, '/metrics', { accept: 'application/openmetrics-text;version=1.0.0' });
  assert.equal(r.body, TEXT);
});

test('a failing exposition is a 500', async (t) => {
  const e = await endpoint({
    exposition: () => {
      throw new Error('boom');
    },
  });
  t.after(() => e.close());
  const r = await get(e.port);
  assert.equal(r.status, 500);
  assert.match(r.body, /boom/);
});

test('the host comes from WORKERSD_METRICS_HOST', async (t) => {
  const saved = process.env.WORKERSD_METRICS_HOST;
  process.env.WORKERSD_METRICS_HOST = '127.0.0.1';
  const e = new workersd.MetricsEndpoint({ exposition: () => TEXT });
  if (saved === undefined) delete process.env.WORKERSD_METRICS_HOST;
  else process.env.WORKERSD_METRICS_HOST = saved;
  await e.listen();
  t.after(() => e.close());
  assert.equal(e._server.address().address, '127.0.0.1');
});

test('waitFinalScrape counts only a scrape that begins after the call', async (t) => {
  // The exposition of the first scrape is held until released, so that
  // scrape begins before the call and ends after it.
  let release;
  let calls = 0;
  const e = await endpoint({
    exposition: () => {
      calls++;
      if (calls === 1) return new Promise((r) => (release = () => r(TEXT)));
      return TEXT;
    },
  });
  t.after(() => e.close());

  const early = get(e.port, e.path);
  await (async function wait() {
    while (calls === 0) await turns(1);
  })();
  let result = null;
  const waiting = e.waitFinalScrape(10000).then((ok) => (result = ok));
  release();
  assert.equal((await early).status, 200);
  await turns();
  assert.equal(result, null, 'a scrape begun before waitFinalScrape counted as final');

  await get(e.port, '/metrics'); // for people: not the final scrape
  await turns();
  assert.equal(result, null, 'a scrape of /metrics counted as final');
  await get(e.port, e.path);
  await waiting;
  assert.equal(result, true);
  // Once one has completed, later calls resolve at once.
  assert.equal(await e.waitFinalScrape(1), true);
});

test('waitFinalScrape resolves false after the timeout', async (t) => {
  const e = await endpoint({ exposition: () => TEXT });
  t.after(() => e.close());
  await get(e.port, e.path); // before: does not count
  const began = Date.now();
  assert.equal(await e.waitFinalScrape(100), false);
  assert.ok(Date.now() - began >= 90);
});

test('toOpenMetrics: counter names, untyped, timestamps, comments', () => {
  const text = [
    '# HELP a_total A "quoted" \\\\ and \\n.',
    '# TYPE a_total counter',
    'a_total{x="1"} 5',
    '# a plain comment',
    '',
    '# HELP b B.',
    '# TYPE b counter',
    'b 2',
    '# TYPE u untyped',
    'u 1 1700000000123',
    '# TYPE g gauge',
    'g NaN',
    '',
  ].join('\n');
  assert.equal(
    workersd.toOpenMetrics(text),
    [
      '# HELP a A "quoted" \\\\ and \\n.',
      '# TYPE a counter',
      'a_total{x="1"} 5',
      '# HELP b B.',
      '# TYPE b counter',
      'b_total 2',
      '# TYPE u unknown',
      'u 1 1700000000.123',
      '# TYPE g gauge',
      'g NaN',
      '# EOF',
      '',
    ].join('\n'),
  );
});

test('withCreated: one _created after each series, label sets as they are', () => {
  const om = [
    '# TYPE c counter',
    'c_total{code="200",path="/a,b}"} 3',
    'c_total{code="404",path="say \\"hi\\""} 1 # {trace_id="x"} 1 1.5',
    '# TYPE h histogram',
    'h_bucket{m="GET",le="0.1"} 0',
    'h_bucket{m="GET",le="+Inf"} 1',
    'h_sum{m="GET"} 0.5',
    'h_count{m="GET"} 1',
    'h_bucket{le="+Inf",m="POST"} 2',
    'h_sum{m="POST"} 3',
    'h_count{m="POST"} 2',
    '# TYPE s summary',
    's{quantile="0.5"} 1',
    's_sum 1',
    's_count 1',
    '# TYPE g gauge',
    'g 1',
    '# TYPE k counter',
    'k_total 1',
    'k_created 5',
    '# EOF',
    '',
  ].join('\n');
  assert.equal(
    workersd.withCreated(om, 42),
    [
      '# TYPE c counter',
      'c_total{code="200",path="/a,b}"} 3',
      'c_created{code="200",path="/a,b}"} 42.000',
      'c_total{code="404",path="say \\"hi\\""} 1 # {trace_id="x"} 1 1.5',
      'c_created{code="404",path="say \\"hi\\""} 42.000',
      '# TYPE h histogram',
      'h_bucket{m="GET",le="0.1"} 0',
      'h_bucket{m="GET",le="+Inf"} 1',
      'h_sum{m="GET"} 0.5',
      'h_count{m="GET"} 1',
      'h_created{m="GET"} 42.000',
      'h_bucket{le="+Inf",m="POST"} 2',
      'h_sum{m="POST"} 3',
      'h_count{m="POST"} 2',
      'h_created{m="POST"} 42.000',
      '# TYPE s summary',
      's{quantile="0.5"} 1',
      's_sum 1',
      's_count 1',
      's_created 42.000',
      '# TYPE g gauge',
      'g 1',
      '# TYPE k counter',
      'k_total 1',
      'k_created 5',
      '# EOF',
      '',
    ].join('\n'),
  );
});

// A final scrape counts only once the scraper received its whole answer in
// time (docs/SOAK.md, "a final scrape that never arrived"; the Go worker's
// TestFinalScrapeThatNeverArrived, the Python and Ruby clients' tests). A
// scraper sends its request after the exit began and reads `read` bytes of
// the answer (then resets the connection; 0: reads nothing, as over a cut
// link): not the final scrape; a scrape read whole after it is. The
// scraper is Python's socket, since Node cannot shrink a TCP socket's
// receive buffer: with 1 KiB of window, most of a 20 KB answer is handed
// to the kernel (the response finishes) but never acknowledged.
const BAD_SCRAPER = String.raw`
import socket, struct, sys, time
port, path, read = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
s.connect(("127.0.0.1", port))
s.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\nX-Prometheus-Scrape-Timeout-Seconds: 1\r\n\r\n" % path.encode())
if read:
    s.settimeout(10)
    assert s.recv(read)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()
print("sent", flush=True)
time.sleep(60)
`;

for (const [name, read] of [['an unread answer', 0], ['an answer cut off', 1]]) {
  test(`${name} is not the final scrape`, { skip: process.platform !== 'linux' && 'the kernel reports unacknowledged bytes on Linux only' }, async (t) => {
    const body = TEXT + '# padding\n'.repeat(2000);
    const e = await endpoint({ exposition: () => body, created: false });
    t.after(() => e.close());
    let result = null;
    const waiting = e.waitFinalScrape(20000).then((ok) => (result = ok));

    const bad = spawn('python3', ['-c', BAD_SCRAPER, String(e.port), e.path, String(read)], { stdio: ['ignore', 'pipe', 'inherit'] });
    t.after(() => bad.kill('SIGKILL'));
    const start = Date.now();
    while ((e.undeliveredScrapes || 0) === 0 && result === null) {
      assert.ok(Date.now() - start < 10000, 'the undelivered scrape neither counted nor refused');
      await new Promise((r) => setTimeout(r, 10));
    }
    assert.equal(result, null, 'a scrape whose answer was never read counted as the final scrape');
    bad.kill('SIGKILL');

    const res = await get(e.port, e.path);
    assert.equal(res.status, 200);
    await waiting;
    assert.equal(result, true);
  });
}
