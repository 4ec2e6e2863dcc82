'use strict';

// Transforms of an exposition's text. Prometheus 3 sees that a worker
// restarted (a counter reset, even one its first scrape would hide) through
// the created timestamp of each counter, which only the OpenMetrics format
// carries (_created lines) and which prom-client 15 does not write in
// either format. toOpenMetrics turns prom-client's default (Prometheus text
// 0.0.4) output into OpenMetrics without switching the registry's content
// type: prom-client's OpenMetrics mode renames counters in place ("x_total"
// becomes "x" for good, on the first render), which would also rename them
// in what AggregatorRegistry collects. withCreated then adds the _created
// lines.

const OPENMETRICS_CONTENT_TYPE = 'application/openmetrics-text; version=1.0.0; charset=utf-8';
const PROMETHEUS_CONTENT_TYPE = 'text/plain; version=0.0.4; charset=utf-8';

// Families whose samples carry a created timestamp in OpenMetrics.
const CREATED_TYPES = new Set(['counter', 'histogram', 'summary']);

// Sample suffixes by family type: what a sample name may add to its
// family's name.
const SUFFIXES = {
  counter: ['_total', '_created'],
  histogram: ['_bucket', '_sum', '_count', '_created'],
  summary: ['_sum', '_count', '_created'],
};

function isOpenMetrics(contentType) {
  return /^application\/openmetrics-text/i.test(contentType || '');
}

// parseSample splits a sample line into its name, the text between its
// braces (label pairs, escapes kept), and the rest (value, timestamp,
// exemplar). null if the line is not a sample.
function parseSample(line) {
  const m = /^[a-zA-Z_:][a-zA-Z0-9_:]*/.exec(line);
  if (!m) return null;
  const name = m[0];
  let i = name.length;
  let labels = '';
  if (line[i] === '{') {
    let quoted = false;
    let j = i + 1;
    for (; j < line.length; j++) {
      const c = line[j];
      if (quoted && c === '\\') j++;
      else if (c === '"') quoted = !quoted;
      else if (c === '}' && !quoted) break;
    }
    if (j >= line.length) return null;
    labels = line.slice(i + 1, j);
    i = j + 1;
  }
  return { name, labels, rest: line.slice(i).trim() };
}

// labelPairs splits a label set's text on the commas between pairs.
function labelPairs(labels) {
  const pairs = [];
  let quoted = false;
  let start = 0;
  for (let j = 0; j < labels.length; j++) {
    const c = labels[j];
    if (quoted && c === '\\') j++;
    else if (c === '"') quoted = !quoted;
    else if (c === ',' && !quoted) {
      pairs.push(labels.slice(start, j).trim());
      start = j + 1;
    }
  }
  pairs.push(labels.slice(start).trim());
  return pairs.filter((p) => p !== '');
}

// family finds which declared family a sample name belongs to.
function familyOf(name, types) {
  if (types.has(name)) return name;
  for (const suffix of ['_total', '_created', '_bucket', '_count', '_sum']) {
    if (name.endsWith(suffix)) {
      const base = name.slice(0, -suffix.length);
      const type = types.get(base);
      if (type && (SUFFIXES[type] || []).includes(suffix)) return base;
    }
  }
  return null;
}

// toOpenMetrics converts Prometheus text format 0.0.4 into OpenMetrics
// 1.0.0: a counter's family is named without "_total" and its samples
// with it; untyped becomes unknown; timestamps become seconds; comments
// other than HELP and TYPE and blank lines go; "# EOF" ends it.
function toOpenMetrics(text) {
  const lines = text.split('\n');
  const types = new Map();
  for (const line of lines) {
    const m = /^#\s+TYPE\s+(\S+)\s+(\S+)/.exec(line);
    if (m) types.set(m[1], m[2]);
  }
  const familyName = (name) => {
    const type = types.get(name);
    return type === 'counter' && name.endsWith('_total') ? name.slice(0, -'_total'.length) : name;
  };
  const out = [];
  for (const line of lines) {
    if (line.trim() === '') continue;
    if (line.startsWith('#')) {
      const m = /^#\s+(HELP|TYPE)\s+(\S+)(?:\s(.*))?$/.exec(line);
      if (!m) continue;
      const [, kind, name, rest = ''] = m;
      if (kind === 'TYPE') {
        out.push(`# TYPE ${familyName(name)} ${rest.trim() === 'untyped' ? 'unknown' : rest.trim()}`);
      } else {
        out.push(`# HELP ${familyName(name)} ${rest}`);
      }
      continue;
    }
    const s = parseSample(line);
    if (!s) continue;
    let name = s.name;
    if (types.get(name) === 'counter' && !name.endsWith('_total')) name += '_total';
    const [value, timestamp] = s.rest.split(/\s+/);
    let sample = `${name}${s.labels === '' ? '' : `{${s.labels}}`} ${value}`;
    if (timestamp !== undefined && /^-?\d+$/.test(timestamp)) sample += ` ${(Number(timestamp) / 1000).toFixed(3)}`;
    out.push(sample);
  }
  out.push('# EOF');
  return out.join('\n') + '\n';
}

// withCreated adds to OpenMetrics text a _created sample of startSeconds
// (Unix seconds) for every counter, histogram and summary series that has
// none, right after the series' samples: Prometheus reads a series' created
// timestamp from the first _created line that follows it in its family.
// Families that already carry _created lines are left as they are.
function withCreated(text, startSeconds) {
  const created = Number(startSeconds).toFixed(3);
  const lines = text.split('\n');
  const types = new Map();
  for (const line of lines) {
    const m = /^#\s+TYPE\s+(\S+)\s+(\S+)/.exec(line);
    if (m) types.set(m[1], m[2]);
  }
  const hasCreated = new Set();
  for (const line of lines) {
    const s = !line.startsWith('#') && parseSample(line);
    if (s && s.name.endsWith('_created')) {
      const f = familyOf(s.name, types);
      if (f) hasCreated.add(f);
    }
  }
  const out = [];
  // The series whose _created line is due: its family and label set
  // (without le or quantile, which Prometheus leaves out of the match).
  let pending = null;
  const flush = () => {
    if (pending) out.push(`${pending.family}_created${pending.labels === '' ? '' : `{${pending.labels}}`} ${created}`);
    pending = null;
  };
  for (const line of lines) {
    const s = line.startsWith('#') ? null : parseSample(line);
    const family = s && familyOf(s.name, types);
    const type = family && types.get(family);
    if (!s || !CREATED_TYPES.has(type) || hasCreated.has(family)) {
      flush();
      out.push(line);
      continue;
    }
    const pairs = labelPairs(s.labels);
    const key = type === 'counter' ? pairs : pairs.filter((p) => !/^(le|quantile)\s*=/.test(p));
    const labels = key.join(',');
    if (pending && (pending.family !== family || pending.labels !== labels)) flush();
    out.push(line);
    pending = { family, labels };
  }
  flush();
  return out.join('\n');
}

module.exports = { OPENMETRICS_CONTENT_TYPE, PROMETHEUS_CONTENT_TYPE, isOpenMetrics, toOpenMetrics, withCreated, parseSample };
