// Package promcheck checks that a Prometheus server reading sdwriter's
// output is set up for exact job-wide totals, through its HTTP API only.
//
// workersd's promise (every restart seen, totals exact) holds for one setup:
// Prometheus 3 ingesting created timestamps as zero samples, a scrape
// interval short enough for the slot hold, a format that carries created
// timestamps, each target read once and kept whole on one shard. A small
// slip costs up to all of increase() (docs/RESTARTS.md) and nothing says so:
// the numbers are simply wrong. A Checker asks a server what it runs
// (build info, flags, loaded configuration, active targets), finds the scrape
// jobs that read sdwriter's files or /sd, and compares them with what
// sdwriter serves, by running the jobs' relabelling on sdwriter's targets
// with Prometheus' own relabel code. Each problem is a Finding with a stable
// ID, what it costs and how to fix it.
//
// Problems with single targets (missing, down, not served) are reported only
// once they have lasted longer than Prometheus needs to catch up with a
// change of the output (its discovery delay and two scrape intervals), so a
// worker that just started or stopped is never a finding.
package promcheck
