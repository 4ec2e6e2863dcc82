//go:build linux

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/workersd/workersd/internal/testing/buildtest"
	"github.com/workersd/workersd/internal/testing/etcdtest"
	"github.com/workersd/workersd/internal/testing/poll"
	"github.com/workersd/workersd/internal/testing/servertest"
	"github.com/workersd/workersd/promcheck"
	"github.com/workersd/workersd/sdfile"
)

// basicAuth is a Prometheus --web.config.file asking for user "checker"
// with password "s3cret" (bcrypt, cost 4), and the
// --prometheus.http-config-file that gives them.
const (
	basicAuthWebConfig  = "basic_auth_users:\n  checker: $2a$04$dLJlIUlN1eJryGCty3hycuqlP1JRZP.JbaZixwkzxGTN02IaLmUPe\n"
	basicAuthHTTPConfig = "basic_auth:\n  username: checker\n  password: s3cret\n"
)

// metricsEndpoint is a worker's metrics endpoint: a real HTTP server with
// a counter, closed when the test ends.
func metricsEndpoint(t *testing.T) *httptest.Server {
	t.Helper()
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "units_processed_total", Help: "Units."})
	reg.MustRegister(c)
	c.Add(3)
	srv := httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{EnableOpenMetrics: true}))
	t.Cleanup(srv.Close)
	return srv
}

func getChecks(t *testing.T, in *instance) checksReport {
	t.Helper()
	code, ct, body := httpGet("http://" + in.web + "/api/v1/checks")
	if code != http.StatusOK || ct != "application/json" {
		t.Fatalf("/api/v1/checks: %d %q", code, ct)
	}
	var r checksReport
	if err := json.Unmarshal(body, &r); err != nil {
		t.Fatalf("/api/v1/checks: %v in %s", err, body)
	}
	return r
}

// findingIDs lists a result's finding IDs.
func findingIDs(r promcheck.Result) string {
	ids := []string{}
	for _, f := range r.Findings {
		ids = append(ids, f.ID)
	}
	return strings.Join(ids, ",")
}

// checkCommand runs "sdwriter check" with args in this process, bounded in
// time, and returns its exit code and what it printed.
func checkCommand(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var out, errs bytes.Buffer
	start := time.Now()
	code = runCheck(ctx, args, &out, &errs)
	t.Logf("sdwriter check %s: exit %d in %s\n%s%s", strings.Join(args, " "), code, time.Since(start).Round(time.Millisecond), out.String(), errs.String())
	return code, out.String(), errs.String()
}

// Issue 24: sdwriter checks the Prometheus servers that read its output.
// Three real Prometheus 3.15 servers read sdwriter's file through file_sd:
// one set up as README recommends, one without
// created-timestamp-zero-ingestion, and one set up right that asks for
// basic auth; two workers' endpoints are the targets. The running sdwriter
// (with the credentials in --prometheus.http-config-file) shows the first
// and third with no finding and the second with created_timestamps_off in
// /api/v1/checks, /api/v1/status, its metrics and its status page in
// Chromium; "sdwriter check" exits 0 on the first and 1 on the second,
// printing the fix, reading the output from the file or from the running
// sdwriter, and 1 on the third without credentials; a second sdwriter
// writes shards, of which a job keeps one. The first server's job then
// reads sdwriter's /sd (http_sd) instead: still no finding. Last, a
// worker's endpoint goes away: the check waits until Prometheus has had
// time to catch up, then finds the target down.
func TestPrometheusChecks(t *testing.T) {
	bin := buildtest.RequirePrometheus3(t)
	etcd := etcdtest.Start(t)
	cli := etcd.Client(t)
	dir := t.TempDir()
	file := filepath.Join(dir, "targets", "workersd.json")
	// A second sdwriter writes 2 shards; job sharded reads shard 0 and
	// keeps it, as examples/prometheus.yml shows.
	sharded := filepath.Join(dir, "sharded", "workersd.json")
	shard0 := sdfile.ShardFile(sharded, 0, 2)
	for _, d := range []string{filepath.Dir(file), filepath.Dir(shard0)} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// config is the servers' configuration, where job workersd reads
	// sdwriter's output with sd.
	config := func(sd string) string {
		return fmt.Sprintf(`global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: workersd
%s
  - job_name: sharded
    file_sd_configs:
      - files: [%q]
        refresh_interval: 1s
    relabel_configs:
      - source_labels: [instance]
        modulus: 2
        target_label: __tmp_shard
        action: hashmod
      - source_labels: [__tmp_shard]
        regex: "0"
        action: keep
`, sd, filepath.Join(filepath.Dir(shard0), "*.json"))
	}
	cfg := config(fmt.Sprintf("    file_sd_configs:\n      - files: [%q]\n        refresh_interval: 1s", filepath.Join(dir, "targets", "*.json")))
	webConfig, httpConfig := filepath.Join(dir, "web.yml"), filepath.Join(dir, "http.yml")
	for f, s := range map[string]string{webConfig: basicAuthWebConfig, httpConfig: basicAuthHTTPConfig} {
		if err := os.WriteFile(f, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	goodProm := servertest.StartPrometheus(t, "prometheus-good", bin, cfg, "--enable-feature=created-timestamp-zero-ingestion")
	badProm := servertest.StartPrometheus(t, "prometheus-no-flag", bin, cfg)
	authProm := servertest.StartPrometheus(t, "prometheus-auth", bin, cfg, "--enable-feature=created-timestamp-zero-ingestion", "--web.config.file="+webConfig)
	for _, p := range []*servertest.Prometheus{goodProm, badProm, authProm} {
		p.Ready()
	}
	good, bad, auth := goodProm.URL(), badProm.URL(), authProm.URL()

	w1, w2 := metricsEndpoint(t), metricsEndpoint(t)
	putReg(t, cli, "api/web-1/0", strings.TrimPrefix(w1.URL, "http://"))
	putReg(t, cli, "api/web-1/1", strings.TrimPrefix(w2.URL, "http://")) // shard 1 of 2
	sh := startSdwriter(t, sharded, "--etcd.endpoints="+etcd.Endpoint(), "--output.shards=2")
	in := startSdwriter(t, file, "--etcd.endpoints="+etcd.Endpoint(),
		"--prometheus.url="+good, "--prometheus.url="+bad, "--prometheus.url="+auth,
		"--prometheus.http-config-file="+httpConfig, "--prometheus.check-interval=1s")

	var last string
	took := poll.Until(t, 90*time.Second, func() bool {
		r := getChecks(t, in)
		b, _ := json.Marshal(r)
		last = string(b)
		if len(r.Prometheus) != 3 {
			return false
		}
		g, n, a := r.Prometheus[0], r.Prometheus[1], r.Prometheus[2]
		return !g.Checked.IsZero() && findingIDs(g) == "" && g.Pending == 0 && len(g.Jobs) == 1 && g.Jobs[0].Up == 2 &&
			findingIDs(n) == promcheck.IDCreatedTimestampsOff && n.Pending == 0 && len(n.Jobs) == 1 && n.Jobs[0].Up == 2 &&
			findingIDs(a) == "" && a.Pending == 0 && len(a.Jobs) == 1 && a.Jobs[0].Up == 2
	}, "/api/v1/checks: no finding for %s and %s, created_timestamps_off for %s; last: %s", good, auth, bad, poll.Latest(&last))
	t.Logf("checks settled in %s", took.Round(time.Millisecond))

	t.Run("checks as JSON", func(t *testing.T) {
		r := getChecks(t, in)
		g, n := r.Prometheus[0], r.Prometheus[1]
		if g.URL != good || n.URL != bad || !strings.HasPrefix(g.Version, "3.15") {
			t.Errorf("servers %s %s, version %q", g.URL, n.URL, g.Version)
		}
		j := g.Jobs[0]
		if j.Name != "workersd" || len(j.Reads) != 1 || fmt.Sprint(j.Shards) != "[0]" || j.ScrapeInterval != "1s" || j.Targets != 2 || j.Active != 2 {
			t.Errorf("job %+v", j)
		}
		f := n.Findings[0]
		if f.Severity != promcheck.Error || !strings.Contains(f.Fix, "--enable-feature=created-timestamp-zero-ingestion") || f.Cost == "" {
			t.Errorf("finding %+v", f)
		}
		_, st := getStatus(t, in, "")
		if len(st.Prometheus) != 3 || findingIDs(st.Prometheus[1]) != promcheck.IDCreatedTimestampsOff {
			t.Errorf("/api/v1/status: prometheus %+v", st.Prometheus)
		}
		if st.Output.Shards != 1 || fmt.Sprint(st.Output.AbsFiles) != fmt.Sprint([]string{file}) {
			t.Errorf("/api/v1/status: output.shards %d, output.abs_files %v; want 1, [%s]", st.Output.Shards, st.Output.AbsFiles, file)
		}
	})

	t.Run("metrics", func(t *testing.T) {
		if n := in.metric(t, "workersd_sdwriter_prometheus_check_findings", "prometheus", good); n != 0 {
			t.Errorf("findings of %s: %v, want 0", good, n)
		}
		if n := in.metric(t, "workersd_sdwriter_prometheus_check_findings", "prometheus", bad, "check", promcheck.IDCreatedTimestampsOff, "severity", "error"); n != 1 {
			t.Errorf("created_timestamps_off of %s: %v, want 1", bad, n)
		}
		if n := in.metric(t, "workersd_sdwriter_prometheus_check_findings", "prometheus", bad); n != 1 {
			t.Errorf("findings of %s: %v, want 1", bad, n)
		}
		if n := in.metric(t, "workersd_sdwriter_prometheus_check_pending_targets"); n != 0 {
			t.Errorf("pending targets: %v", n)
		}
		if at := in.metric(t, "workersd_sdwriter_prometheus_check_last_run_timestamp_seconds", "prometheus", good); time.Since(time.Unix(int64(at), 0)) > time.Minute {
			t.Errorf("last check of %s at %v", good, at)
		}
	})

	t.Run("status page in Chromium", func(t *testing.T) {
		chromium := buildtest.RequireTool(t, "chromium", "apt-get install chromium")
		dom := string(runChromium(t, chromium, "--dump-dom", "http://"+in.web+"/"))
		_, sections, _ := strings.Cut(dom, `<h2 id="prometheus">`)
		sections, _, _ = strings.Cut(sections, `<h2 id="jobs">`)
		goodSection, badSection, ok1 := strings.Cut(sections, "<code>"+bad+"</code>")
		badSection, authSection, ok2 := strings.Cut(badSection, "<code>"+auth+"</code>")
		if !ok1 || !ok2 || !strings.Contains(goodSection, "<code>"+good+"</code>") {
			t.Fatalf("no section for %s, %s then %s on the page as Chromium renders it:\n%s", good, bad, auth, sections)
		}
		if !strings.Contains(authSection, `<span class="good">no findings</span>`) {
			t.Errorf("%s's section does not say no findings:\n%s", auth, authSection)
		}
		for _, want := range []string{`<span class="good">no findings</span>`, "0 target problems"} {
			if !strings.Contains(goodSection, want) {
				t.Errorf("%s's section lacks %s:\n%s", good, want, goodSection)
			}
		}
		if !hasRow(goodSection, "job", "workersd", filepath.Join(dir, "targets", "*.json"), "1s", "every target", "2") {
			t.Errorf("%s's section has no row for job workersd:\n%s", good, goodSection)
		}
		if strings.Contains(goodSection, `class="finding`) {
			t.Errorf("%s's section shows a finding:\n%s", good, goodSection)
		}
		if !hasRow(badSection, "finding error", "error", promcheck.IDCreatedTimestampsOff, "created-timestamp-zero-ingestion is off",
			"start Prometheus with --enable-feature=created-timestamp-zero-ingestion") {
			t.Errorf("%s's section has no row for created_timestamps_off:\n%s", bad, badSection)
		}
		if !strings.Contains(badSection, `<span class="bad">1 error</span>, 0 warnings`) {
			t.Errorf("%s's section does not count 1 error:\n%s", bad, badSection)
		}
		// WORKERSD_CHECKS_SCREENSHOT names where to keep a screenshot of
		// the section (docs/STATUS.md may show one).
		if shot := os.Getenv("WORKERSD_CHECKS_SCREENSHOT"); shot != "" {
			shot, _ = filepath.Abs(shot)
			runChromium(t, chromium, "--screenshot="+shot, "--window-size=1280,2000", "--hide-scrollbars", "http://"+in.web+"/")
			t.Logf("screenshot: %s", shot)
		}
	})

	t.Run("check reading the file", func(t *testing.T) {
		code, out, _ := checkCommand(t, "--prometheus.url="+good, "--output.file="+file)
		if code != 0 || !strings.Contains(out, "  no findings\n") || !strings.Contains(out, "job workersd reads") ||
			!strings.HasSuffix(out, "sdwriter check: no errors, 0 warnings on 1 Prometheus server\n") {
			t.Errorf("good setup: exit %d\n%s", code, out)
		}
		code, out, _ = checkCommand(t, "--prometheus.url="+good, "--prometheus.url="+bad, "--output.file="+file)
		if code != 1 || !strings.Contains(out, "error created_timestamps_off: ") ||
			!strings.Contains(out, "    fix:  start Prometheus with --enable-feature=created-timestamp-zero-ingestion\n") ||
			!strings.HasSuffix(out, "sdwriter check: 1 error, 0 warnings on 2 Prometheus servers: not set up for exact totals\n") {
			t.Errorf("one server without the flag: exit %d\n%s", code, out)
		}
	})

	t.Run("check asking sdwriter", func(t *testing.T) {
		code, out, _ := checkCommand(t, "--prometheus.url="+good, "--sdwriter.url=http://"+in.web)
		if code != 0 || !strings.Contains(out, "  no findings\n") || !strings.Contains(out, "2 targets, 2 active, 2 up") {
			t.Errorf("good setup: exit %d\n%s", code, out)
		}
		code, out, _ = checkCommand(t, "--prometheus.url="+bad, "--sdwriter.url=http://"+in.web, "--format=json")
		var r checksReport
		if err := json.Unmarshal([]byte(out), &r); err != nil {
			t.Fatalf("--format=json: %v\n%s", err, out)
		}
		if code != 1 || len(r.Prometheus) != 1 || findingIDs(r.Prometheus[0]) != promcheck.IDCreatedTimestampsOff ||
			!strings.Contains(r.Prometheus[0].Findings[0].Fix, "--enable-feature=created-timestamp-zero-ingestion") {
			t.Errorf("no flag, as JSON: exit %d\n%s", code, out)
		}
	})

	t.Run("check of an unreachable server", func(t *testing.T) {
		code, out, _ := checkCommand(t, "--prometheus.url=http://"+etcdtest.FreeAddr(t), "--output.file="+file)
		if code != 1 || !strings.Contains(out, "error prometheus_unreachable: ") || !strings.Contains(out, "fix:  check --prometheus.url") {
			t.Errorf("exit %d\n%s", code, out)
		}
	})

	t.Run("check with credentials", func(t *testing.T) {
		code, out, _ := checkCommand(t, "--prometheus.url="+auth, "--output.file="+file)
		if code != 1 || !strings.Contains(out, "error prometheus_unreachable: GET /api/v1/status/buildinfo: 401 Unauthorized: the server wants credentials (--prometheus.http-config-file)") {
			t.Errorf("without credentials: exit %d\n%s", code, out)
		}
		code, out, _ = checkCommand(t, "--prometheus.url="+auth, "--output.file="+file, "--prometheus.http-config-file="+httpConfig)
		if code != 0 || !strings.Contains(out, "  no findings\n") {
			t.Errorf("with credentials: exit %d\n%s", code, out)
		}
	})

	t.Run("check of a sharded output", func(t *testing.T) {
		_, st := getStatus(t, sh, "")
		if want := []string{shard0, sdfile.ShardFile(sharded, 1, 2)}; st.Output.Shards != 2 || fmt.Sprint(st.Output.AbsFiles) != fmt.Sprint(want) {
			t.Errorf("/api/v1/status: output.shards %d, output.abs_files %v; want 2, %v", st.Output.Shards, st.Output.AbsFiles, want)
		}
		for _, from := range [][]string{{"--sdwriter.url=http://" + sh.web}, {"--output.file=" + sharded, "--output.shards=2"}} {
			code, out, _ := checkCommand(t, append([]string{"--prometheus.url=" + good}, from...)...)
			if code != 0 || !strings.Contains(out, "job sharded reads "+filepath.Dir(shard0)+"/*.json (shard 0)") ||
				!strings.Contains(out, "keeps hashmod of instance, modulus 2: keeps shard 0; 1 target, 1 active, 1 up") || !strings.Contains(out, "  no findings\n") {
				t.Errorf("%s: exit %d\n%s", from, code, out)
			}
		}
	})

	// The job reads sdwriter's /sd instead: http_sd URLs are matched by
	// the port of sdwriter's --web.listen-address, and of --sdwriter.url.
	t.Run("http_sd", func(t *testing.T) {
		sd := "http://" + in.web + "/sd"
		goodProm.Reload(config(fmt.Sprintf("    http_sd_configs:\n      - url: %s\n        refresh_interval: 1s", sd)))
		poll.Until(t, 60*time.Second, func() bool {
			r := getChecks(t, in).Prometheus[0]
			b, _ := json.Marshal(r)
			last = string(b)
			return findingIDs(r) == "" && r.Pending == 0 && len(r.Jobs) == 1 && fmt.Sprint(r.Jobs[0].Reads) == "["+sd+"]" && r.Jobs[0].Up == 2
		}, "/api/v1/checks: job workersd reads %s, no findings; last: %s", sd, poll.Latest(&last))
		code, out, _ := checkCommand(t, "--prometheus.url="+good, "--sdwriter.url=http://"+in.web)
		if code != 0 || !strings.Contains(out, "job workersd reads "+sd+" (shard 0)") || !strings.Contains(out, "  no findings\n") {
			t.Errorf("exit %d\n%s", code, out)
		}
	})

	// Last: it spoils the good setup.
	t.Run("a target down", func(t *testing.T) {
		w2.Close()
		// The check starts once Prometheus has seen it down, so that its
		// first look sees the problem and its second confirms it.
		poll.Until(t, 30*time.Second, func() bool {
			var targets struct {
				Data struct {
					ActiveTargets []struct {
						ScrapeURL string `json:"scrapeUrl"`
						Health    string `json:"health"`
					} `json:"activeTargets"`
				} `json:"data"`
			}
			_, _, body := httpGet(good + "/api/v1/targets?state=active")
			json.Unmarshal(body, &targets)
			for _, a := range targets.Data.ActiveTargets {
				if strings.HasPrefix(a.ScrapeURL, w2.URL) && a.Health == "down" {
					return true
				}
			}
			return false
		}, "Prometheus sees %s down", w2.URL)
		start := time.Now()
		code, out, stderr := checkCommand(t, "--prometheus.url="+good, "--sdwriter.url=http://"+in.web)
		if !strings.Contains(stderr, good+": 1 target problem too recent to tell; checking again in ") {
			t.Errorf("the check does not say why it waits:\n%s", stderr)
		}
		// Prometheus' discovery delay and two scrape intervals.
		if took := time.Since(start); code != 1 || took < 10*time.Second || !strings.Contains(out, "error target_down (job workersd): 1 of the 2 targets") ||
			!strings.Contains(out, strings.TrimPrefix(w2.URL, "http://")) || !strings.Contains(out, "    fix:  let the server reach the workers'") {
			t.Errorf("exit %d after %s\n%s", code, took, out)
		}
		poll.Until(t, 30*time.Second, func() bool {
			return findingIDs(getChecks(t, in).Prometheus[0]) == promcheck.IDTargetDown
		}, "target_down in /api/v1/checks")
	})
}

// blackHole returns the address of a listener that never accepts: a
// server that never answers.
func blackHole(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln.Addr().String()
}

// Issue 24: without --prometheus.url the page says how to check the
// Prometheus servers and /api/v1/checks lists none; with one that has not
// answered yet, the page says "not checked yet". (The server here accepts
// connections and never answers.)
func TestChecksBeforeTheFirstAndDisabled(t *testing.T) {
	etcd := etcdtest.Start(t)
	in := startSdwriter(t, "", "--etcd.endpoints="+etcd.Endpoint())
	if r := getChecks(t, in); r.Prometheus == nil || len(r.Prometheus) != 0 {
		t.Errorf("/api/v1/checks without --prometheus.url: %+v, want an empty list", r)
	}
	_, _, body := httpGet("http://" + in.web + "/api/v1/status")
	if bytes.Contains(body, []byte(`"prometheus"`)) {
		t.Errorf("/api/v1/status without --prometheus.url has a prometheus field:\n%s", body)
	}
	_, _, body = httpGet("http://" + in.web + "/")
	if !bytes.Contains(body, []byte(`<p id="prometheus-off">Not checked: give sdwriter a <code>--prometheus.url</code>`)) {
		t.Errorf("the page does not say how to check Prometheus:\n%s", body)
	}

	silent := blackHole(t)
	in = startSdwriter(t, "", "--etcd.endpoints="+etcd.Endpoint(), "--prometheus.url=http://"+silent)
	r := getChecks(t, in)
	if len(r.Prometheus) != 1 || r.Prometheus[0].URL != "http://"+silent || !r.Prometheus[0].Checked.IsZero() || len(r.Prometheus[0].Findings) != 0 {
		t.Errorf("/api/v1/checks before the first check: %+v", r)
	}
	_, _, body = httpGet("http://" + in.web + "/")
	if !bytes.Contains(body, []byte(`<td class="check-result">not checked yet</td>`)) || bytes.Contains(body, []byte("prometheus-off")) {
		t.Errorf("the page does not say not checked yet:\n%s", body)
	}
}
