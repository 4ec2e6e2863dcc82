package main

import (
	"fmt"
	"strings"
)

// goRow is one figure copied from a go test run.
type goRow struct {
	section, what, run, goal string
	result                   func(out string, b map[string]map[string][]float64) (string, *bool)
}

func bval(b map[string]map[string][]float64, name, unit string) (float64, bool) {
	v := b[name][unit]
	if len(v) == 0 {
		return 0, false
	}
	return v[0], true
}

func ok(b bool) *bool { return &b }

var goRows = []goRow{
	{"registrar", "Register() to key visible, 200 registrations", "register", "p99 ≤ 20 ms",
		func(_ string, b map[string]map[string][]float64) (string, *bool) {
			p50, _ := bval(b, "BenchmarkRegisterToVisible", "p50-ms")
			p99, found := bval(b, "BenchmarkRegisterToVisible", "p99-ms")
			if !found {
				return "", nil
			}
			return fmt.Sprintf("p50 %s ms, p99 %s ms", f1(p50), f1(p99)), ok(p99 <= 20)
		}},
	{"registrar", "keep-alive requests per worker, TTL 10 s, 100 workers for 30 s (etcd's `grpc_server_msg_received_total{grpc_method=\"LeaseKeepAlive\"}`)", "keepalive", "about 0.3 /s per worker",
		func(_ string, b map[string]map[string][]float64) (string, *bool) {
			v, found := bval(b, "BenchmarkKeepAliveLoad", "keepalives/s/worker")
			if !found {
				return "", nil
			}
			return fmt.Sprintf("%.2f /s per worker (%.0f /s per 1,000 workers)", v, v*1000), ok(v <= 0.35)
		}},
	{"registrar", "SIGKILL of a registered process to key gone, TTL 2 s", "killed", "≤ TTL + 1.5 s",
		func(out string, _ map[string]map[string][]float64) (string, *bool) {
			m := logged(out, `key gone (\S+) after SIGKILL \(TTL (\S+)\)`)
			if m == nil {
				return "", nil
			}
			return prettyDur(m[1]), ok(durationMs(m[1]) <= durationMs(m[2])+1500)
		}},
	{"registrar", "registered again after etcd restart / wipe / external revoke / external delete", "survives", "within TTL",
		func(out string, _ map[string]map[string][]float64) (string, *bool) {
			var parts []string
			all := true
			for _, re := range []string{`restart[^:\n]*: all back (\S+) after`, `wiped[^:\n]*: all back (\S+) after`, `back (\S+) after external revoke`, `back (\S+) after external delete`} {
				m := logged(out, re)
				if m == nil {
					parts = append(parts, "?")
					all = false
					continue
				}
				parts = append(parts, prettyDur(m[1]))
				all = all && durationMs(m[1]) <= 10000
			}
			return strings.Join(parts, " / ") + " after etcd answers", ok(all)
		}},
	{"sdwriter", "registration to file at idle, 1,000 others present (Put to file renamed; Delete to file without it)", "regfile", "p99 ≤ 5 ms (issue 13)",
		func(_ string, b map[string]map[string][]float64) (string, *bool) {
			n := "BenchmarkRegistrationToFile"
			p50, _ := bval(b, n, "register-p50-ms")
			p99, found := bval(b, n, "register-p99-ms")
			mx, _ := bval(b, n, "register-max-ms")
			d50, _ := bval(b, n, "deregister-p50-ms")
			d99, _ := bval(b, n, "deregister-p99-ms")
			if !found {
				return "", nil
			}
			return fmt.Sprintf("register p50 %s ms, p99 %s ms, max %s ms; deregister p50 %s ms, p99 %s ms", f1(p50), f1(p99), f1(mx), f1(d50), f1(d99)), ok(p99 <= 5 && d99 <= 5)
		}},
	{"sdwriter", "status page and `/api/v1/status` at 100,000 registrations (issue 15): whole, and a job's page of 1,000 at offset 5,000", "statuspage", "≤ 200 ms",
		func(_ string, b map[string]map[string][]float64) (string, *bool) {
			var parts []string
			all := true
			for _, n := range []string{"html", "json", "html-job-page-1000", "json-job-page-1000"} {
				p50, found := bval(b, "BenchmarkStatusPage/"+n, "serve-p50-ms")
				mx, _ := bval(b, "BenchmarkStatusPage/"+n, "serve-max-ms")
				if !found {
					return "", nil
				}
				parts = append(parts, fmt.Sprintf("%s p50 %s ms, max %s ms", n, f1(p50), f1(mx)))
				all = all && mx <= 200
			}
			return strings.Join(parts, "; "), ok(all)
		}},
	{"sdwriter", "initial sync, 10,000 / 100,000 registrations", "sync", "≤ 1 s / ≤ 10 s",
		func(_ string, b map[string]map[string][]float64) (string, *bool) {
			a, f1ok := bval(b, "BenchmarkInitialSync/10000", "ns/op")
			c, f2ok := bval(b, "BenchmarkInitialSync/100000", "ns/op")
			fa, _ := bval(b, "BenchmarkInitialSync/10000", "file-MiB")
			if !f1ok || !f2ok {
				return "", nil
			}
			return fmt.Sprintf("%s ms (%s MiB file) / %s ms", f1(a/1e6), f1(fa), f1(c/1e6)), ok(a <= 1e9 && c <= 10e9)
		}},
	{"sdwriter", "sdwriter RSS (peak, VmHWM), 10,000 / 100,000; start to ready", "sync", "≤ 150 MB at 10k",
		func(_ string, b map[string]map[string][]float64) (string, *bool) {
			a, found := bval(b, "BenchmarkSdwriterRSS/10000", "VmHWM-MB")
			c, _ := bval(b, "BenchmarkSdwriterRSS/100000", "VmHWM-MB")
			ra, _ := bval(b, "BenchmarkSdwriterRSS/10000", "start-to-ready-ms")
			rc, _ := bval(b, "BenchmarkSdwriterRSS/100000", "start-to-ready-ms")
			if !found {
				return "", nil
			}
			return fmt.Sprintf("%s MB / %s MB; ready after %s ms / %s ms", f1(a), f1(c), f1(ra), f1(rc)), ok(a <= 150)
		}},
	{"sdwriter", "full render, 10,000 groups; store update; initial list and decode, 10,000", "render", "render ≤ 50 ms",
		func(_ string, b map[string]map[string][]float64) (string, *bool) {
			r, found := bval(b, "BenchmarkRender10k", "ns/op")
			s, _ := bval(b, "BenchmarkStoreUpdate10k", "ns/op")
			l, _ := bval(b, "BenchmarkInitialList10k", "ns/op")
			if !found {
				return "", nil
			}
			return fmt.Sprintf("render %s ms; store update %s ms; list %s ms", f1(r/1e6), f1(s/1e6), f1(l/1e6)), ok(r <= 50e6)
		}},
	{"sdwriter", "churn: 1,000 registrations rewritten at ~1,000 puts/s for 30 s; how far the file is behind etcd at each write", "churn", "≤ 1 s",
		func(_ string, b map[string]map[string][]float64) (string, *bool) {
			n := "BenchmarkChurn"
			puts, found := bval(b, n, "puts/s")
			w, _ := bval(b, n, "writes/s")
			p50, _ := bval(b, n, "lag-p50-ms")
			p99, _ := bval(b, n, "lag-p99-ms")
			mx, _ := bval(b, n, "lag-max-ms")
			if !found {
				return "", nil
			}
			return fmt.Sprintf("%.0f puts/s reached, %.0f file writes/s; lag p50 %s ms, p99 %s ms, max %s ms", puts, w, f1(p50), f1(p99), f1(mx)), ok(mx <= 1000)
		}},
	{"worker", "Start to registered", "workerstart", "< 100 ms",
		func(_ string, b map[string]map[string][]float64) (string, *bool) {
			v, found := bval(b, "BenchmarkStartToRegistered", "ms/start")
			if !found {
				return "", nil
			}
			return fmt.Sprintf("%s ms", f1(v)), ok(v < 100)
		}},
	{"worker", "/metrics latency over HTTP, 200 application series", "workerstart", "p99 ≤ 2 ms",
		func(_ string, b map[string]map[string][]float64) (string, *bool) {
			p50, _ := bval(b, "BenchmarkMetricsLatency", "p50-ms")
			p99, found := bval(b, "BenchmarkMetricsLatency", "p99-ms")
			if !found {
				return "", nil
			}
			return fmt.Sprintf("p50 %s ms, p99 %s ms", f1(p50), f1(p99)), ok(p99 <= 2)
		}},
	{"worker", "RSS the package adds (same binary, with and without a registered worker)", "workerrss", "≤ 5 MB",
		func(_ string, b map[string]map[string][]float64) (string, *bool) {
			a, found := bval(b, "BenchmarkRSS", "MB-added")
			anon, _ := bval(b, "BenchmarkRSS", "MB-anon-added")
			w, _ := bval(b, "BenchmarkRSS", "MB-rss-with")
			wo, _ := bval(b, "BenchmarkRSS", "MB-rss-without")
			if !found {
				return "", nil
			}
			return fmt.Sprintf("%s MB added (%s MB with, %s MB without), of which %s MB anonymous (heap, stacks: private to each worker); the rest is code pages, shared by every process of the same executable",
				f1(a), f1(w), f1(wo), f1(anon)), ok(a <= 5)
		}},
	{"host agent", "worker SIGKILL to key deleted, pidfd / polling", "agentexit", "≤ 200 ms",
		func(_ string, b map[string]map[string][]float64) (string, *bool) {
			p50, found := bval(b, "BenchmarkExitToRemoval/pidfd", "p50-ms")
			mx, _ := bval(b, "BenchmarkExitToRemoval/pidfd", "max-ms")
			q50, _ := bval(b, "BenchmarkExitToRemoval/poll", "p50-ms")
			qmx, _ := bval(b, "BenchmarkExitToRemoval/poll", "max-ms")
			if !found {
				return "", nil
			}
			return fmt.Sprintf("p50 %s ms, max %s ms / p50 %s ms, max %s ms", f1(p50), f1(mx), f1(q50), f1(qmx)), ok(mx <= 200 && qmx <= 200)
		}},
	{"host agent", "etcd keep-alive requests and this process's CPU (etcd and agent) with 500 live workers, TTL 10 s, over 30 s: a lease per worker / one lease for the host (`--lease=per-host`; issue 13)", "keepalives", "at least 50 times fewer",
		func(_ string, b map[string]map[string][]float64) (string, *bool) {
			w, found := bval(b, "BenchmarkKeepAlives/per-worker", "keepalives/s")
			wc, _ := bval(b, "BenchmarkKeepAlives/per-worker", "cpu-cores")
			h, _ := bval(b, "BenchmarkKeepAlives/per-host", "keepalives/s")
			hc, _ := bval(b, "BenchmarkKeepAlives/per-host", "cpu-cores")
			if !found || h == 0 {
				return "", nil
			}
			return fmt.Sprintf("%s /s, %.4f cores / %s /s (%.0f times fewer), %.4f cores", f1(w), wc, f1(h), w/h, hc), ok(w/h >= 50)
		}},
	{"host agent", "API register + deregister round trip over the Unix socket", "agentapi", "—",
		func(_ string, b map[string]map[string][]float64) (string, *bool) {
			v, found := bval(b, "BenchmarkRegisterDeregister", "ns/op")
			if !found {
				return "", nil
			}
			return fmt.Sprintf("%s ms", f1(v/1e6)), nil
		}},
}

func goRunsSection(m *md, r *Results) []goal {
	if len(r.GoRuns) == 0 {
		return nil
	}
	runs := map[string]GoRun{}
	for _, g := range r.GoRuns {
		runs[g.ID] = g
	}
	m.p("## 5. The main module's own benchmarks")
	m.p("")
	m.p("Run by the harness as `go test` subprocesses from the repository root, one after the other, after the sections above; the figures are copied from their output. The command in each row reproduces it. These run etcd in the test process (fsync off), like the harness.")
	m.p("")
	var goals []goal
	section := ""
	var rows [][]string
	flush := func() {
		if section != "" && len(rows) > 0 {
			m.p("### %s", section)
			m.p("")
			m.table([]string{"what", "command", "result", "goal"}, rows)
		}
		rows = nil
	}
	for _, row := range goRows {
		run, found := runs[row.run]
		if !found {
			continue
		}
		if row.section != section {
			flush()
			section = row.section
		}
		res, verdict := row.result(run.Output, benchLines(run.Output))
		if res == "" {
			res = "no figure in the output"
			if run.Err != "" {
				res += " (" + run.Err + ")"
			}
		}
		if run.Err != "" {
			// A failed run decides no goal; say why, from its output.
			verdict = nil
			res += " — **the run failed** (" + run.Err + "): " + failLine(run.Output)
		}
		g := row.goal
		if verdict != nil {
			g += ": " + met(*verdict)
		}
		rows = append(rows, []string{row.what, "`" + run.Cmd() + "`", res, g})
		if row.run == "regfile" && verdict != nil {
			goals = append(goals, goal{"registration to file p99 ≤ 20 ms at idle", res, met(*verdict)})
		}
		if row.section == "worker" && verdict != nil && !*verdict {
			goals = append(goals, goal{"worker: " + row.what + ", " + row.goal, res, met(false) + " (a goal of the worker package, not of issue 6; see section 5 and [the profiles](PROFILING.md))"})
		}
	}
	flush()
	m.p("How to read this: each benchmark's own doc comment (in the package's `bench_test.go`) says exactly what it times. Latencies taken while the machine is loaded are upper bounds; the load average at the start and end of the run is in the header. Where a goal was missed, [PROFILING.md](PROFILING.md) has the profile, the fix and the figures before and after.")
	m.p("")
	return goals
}

// prettyDur rounds a Go duration string for the table.
func prettyDur(s string) string {
	v := durationMs(s)
	switch {
	case v < 0:
		return s
	case v >= 1000:
		return fmt.Sprintf("%.2f s", v/1000)
	default:
		return f1(v) + " ms"
	}
}

// failLine is the first line of out that says why a test failed.
func failLine(out string) string {
	for _, l := range strings.Split(out, "\n") {
		t := strings.TrimSpace(l)
		if strings.HasPrefix(t, "---") || strings.HasPrefix(t, "FAIL") || strings.HasPrefix(t, "===") || t == "" {
			continue
		}
		if strings.Contains(t, "_test.go:") && !strings.Contains(t, " back ") {
			return "`" + t + "`"
		}
	}
	return "see the output of the command"
}
