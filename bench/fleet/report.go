package main

import (
	"fmt"
	"runtime"
	"strings"
	"time"
)

// table renders the results as the markdown docs/BENCHMARKS.md holds.
func (b *bench) table(rs []*result, big int, bigReady time.Duration, bigRSS float64, bigBytes int) string {
	var s strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&s, format+"\n", args...) }
	if len(rs) == 0 { // -only none: the large initial syncs alone
		if big > 0 && bigReady > 0 {
			p("Initial sync of %d registrations (%.1f MiB file), default settings: %s from sdwriter's start to the file written; peak RSS (VmHWM) %.0f MB after its status page and /sd were served once.", big, float64(bigBytes)/(1<<20), bigReady.Round(time.Millisecond), bigRSS)
		}
		return s.String()
	}
	p("Measured %s on %d cores (%s) with `scripts/bench fleet`: %d registrations in a separate etcd process (etcdmember, fsync off), %d worker restarts a second for %s (each a delete and a put on another slot of the same host: %d etcd events a second), sdwriter writing the file that Prometheus 3.15 reads with examples/prometheus.yml's file_sd (its relabelling then drops every target: discovery is measured, not scraping). The same load three times: as sdwriter wrote before (every change at once), with the default write rate, and split into %d shards with the Prometheus of shard 0 reading its file alone (examples/prometheus.yml's sharded setup; the canaries are then registrations of shard 0).",
		time.Now().UTC().Format("2006-01-02"), runtime.NumCPU(), runtime.GOARCH, b.n, b.rate, b.window, 2*b.rate, shards)
	p("")
	head, rule := "| |", "|---|"
	for _, r := range rs {
		head += " " + r.mode + " |"
		rule += "---|"
	}
	p("%s goal |", head)
	p("%s---|", rule)
	row := func(what, goal string, f func(r *result) string) {
		line := "| " + what + " |"
		for _, r := range rs {
			line += " " + f(r) + " |"
		}
		p("%s %s |", line, goal)
	}
	row("sdwriter CPU, cores (average over the churn)", "≤ 0.10 (issue 27)", func(r *result) string { return fmt.Sprintf("%.3f", r.sdwCPU) })
	oneFile := rs[0] // the size of the unsharded file: the last run that wrote one
	for _, r := range rs {
		if r.shards == 1 {
			oneFile = r
		}
	}
	bytesGoal := "≤ 1/20 of before"
	if strings.HasPrefix(rs[0].mode, "before") {
		bytesGoal += fmt.Sprintf(": %.2f GB", rs[0].bytes/20/1e9)
	}
	row("files written; bytes written by sdwriter (`wchar`)", bytesGoal, func(r *result) string {
		return fmt.Sprintf("%.0f; %.2f GB", r.writes, r.bytes/1e9)
	})
	row("Prometheus CPU, cores (during the churn; at rest before it)", "≤ 0.2", func(r *result) string {
		return fmt.Sprintf("%.3f (%.3f at rest)", r.promCPU, r.promIdleCPU)
	})
	row("Prometheus file_sd reads of the file; mean, p99 read-and-parse", "", func(r *result) string {
		return fmt.Sprintf("%.0f; %.0f ms, %.0f ms", r.scans, r.scanMean*1000, r.scanP99*1000)
	})
	row("change to file: put of a canary (1/s) to the first file holding it, p50 / max", "", func(r *result) string {
		return fmt.Sprintf("%s / %s", pctl(r.fileLat, 0.5).Round(time.Millisecond), r.fileLat[len(r.fileLat)-1].Round(time.Millisecond))
	})
	row("change to Prometheus: max of the above + p99 file_sd read", "≤ 6 s", func(r *result) string {
		return fmt.Sprintf("%s", (r.fileLat[len(r.fileLat)-1] + time.Duration(r.scanP99*float64(time.Second))).Round(time.Millisecond))
	})
	row("etcd CPU, cores", "", func(r *result) string { return fmt.Sprintf("%.3f", r.etcdCPU) })
	row(fmt.Sprintf("initial sync, %d registrations (%.1f MiB file): start to files written; sdwriter peak RSS", b.n, float64(oneFile.fileBytes)/(1<<20)), "≤ 5 s", func(r *result) string {
		return fmt.Sprintf("%s; %.0f MB", r.ready.Round(time.Millisecond), r.rss)
	})
	if big > 0 && bigReady > 0 {
		p("")
		p("Initial sync of %d registrations (%.1f MiB file), default settings: %s from sdwriter's start to the file written; peak RSS (VmHWM) %.0f MB after its status page and /sd were served once.", big, float64(bigBytes)/(1<<20), bigReady.Round(time.Millisecond), bigRSS)
	}
	return s.String()
}
