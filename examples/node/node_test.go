//go:build linux

// Package node holds the Node.js cluster example (server.js, an npm
// package); this test runs it end to end with prom-client 15 from npm.
package node

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/workersd/workersd/internal/testing/buildtest"
	"github.com/workersd/workersd/internal/testing/etcdtest"
	"github.com/workersd/workersd/internal/testing/poll"
	"github.com/workersd/workersd/internal/testing/promtest"
	"github.com/workersd/workersd/internal/testing/servertest"
)

const (
	job        = "node"
	numWorkers = 4
	// Each worker gets ~5 requests/s, so a lifetime of maxRequests lasts
	// ~5 s (Prometheus' discovery delay: most workers are scraped before
	// they exit) and the run goes through ~28 lifetimes, long enough
	// (35 s) for slots to be reused once their 15 s hold ends: the case
	// the created timestamps are for.
	maxRequests  = 25
	requests     = 700
	requestEvery = 50 * time.Millisecond
)

// A real Node cluster (server.js, prom-client 15 from npm, the workersd
// client from clients/node) with the workersd stack beside it:
//
//   - the agent is down while the workers boot: every worker registers
//     within 5 s of its return, each on a slot of its own (4 targets);
//   - through at least 10 recycles (max requests), Prometheus' reset-aware
//     total of the raw samples of the request counter and of the 404
//     counter equals the requests driven, exactly;
//   - a worker killed with SIGKILL leaves the targets file within 1 s;
//   - prom-client's AggregatorRegistry, scraped by the same Prometheus,
//     loses every count of a worker that recycles or dies;
//   - SIGTERM stops the cluster gracefully: every worker deregisters.
func TestNodeCluster(t *testing.T) {
	nodeBin := buildtest.RequireTool(t, "node", "apt-get install nodejs (Node 18 or later)")
	aggAddr := etcdtest.FreeAddr(t)
	stack := servertest.Start(t, servertest.Options{ExtraScrapeConfigs: fmt.Sprintf(`  - job_name: aggregator
    metrics_path: /cluster_metrics
    static_configs:
      - targets: [%q]
`, aggAddr)})
	requireModules(t)

	// (d) The agent is away while the workers boot.
	stack.StopAgent(t)
	began := time.Now()
	bind := etcdtest.FreeAddr(t)
	env := append(stack.Env(),
		"NODE_BIND="+bind,
		"NODE_WORKERS="+strconv.Itoa(numWorkers),
		"NODE_MAX_REQUESTS="+strconv.Itoa(maxRequests),
		"NODE_AGGREGATOR_BIND="+aggAddr,
		"WORKERSD_JOB="+job,
	)
	srv := servertest.Run(t, stack.Dir, "node", env, nodeBin, "server.js")
	// (a) 4 workers, 4 targets on distinct slots, within 5 s of the
	// agent's return.
	registeredAfter := stack.AgentReturns(t, srv, "workersd: agent unreachable", numWorkers)
	t.Logf("agent stopped while %d workers booted: all registered and in the targets file %s after its return", numWorkers, registeredAfter.Round(time.Millisecond))
	for _, tg := range stack.Targets(t) {
		poll.Until(t, 5*time.Second, func() bool { return strings.Contains(srv.Log(), fmt.Sprintf("workersd: registered pid %d ", tg.Pid())) },
			"target %v is not a worker of the cluster", tg)
	}

	// (b) Requests at a steady pace through recycles. A recycling worker
	// is still registered while it waits for its final scrape, beside its
	// replacement: up to twice as many targets as serving workers.
	watch := stack.Watch(2 * numWorkers)
	ok, notFound := servertest.DriveRequests(t, bind, requests, requestEvery)
	lastRequest := time.Now()
	stack.WaitScraped(t, job, lastRequest, 30*time.Second)
	t.Logf("%d requests (%d 200, %d 404) in %s", requests, ok, notFound, lastRequest.Sub(began).Round(time.Second))

	// (c) kill -9 of the worker that counted most (Prometheus has its
	// counts), once none is still recycling (4 targets).
	live := stack.WaitTargets(t, numWorkers, 20*time.Second)
	stack.WaitScraped(t, job, time.Now(), 30*time.Second)
	var victim servertest.Target
	victimCount := -1.0
	for _, tg := range live {
		if v := lastValue(t, stack, fmt.Sprintf(`app_requests_total{job=%q,instance=%q}`, job, tg.Labels["instance"]), time.Now()); v > victimCount {
			victim, victimCount = tg, v
		}
	}
	killed := time.Now()
	gone := stack.KillWorker(t, victim)
	t.Logf("kill -9 of worker %d (%v requests counted): gone from the targets file after %s", victim.Pid(), victimCount, gone.Round(time.Millisecond))
	replaced := stack.WaitTargets(t, numWorkers, 20*time.Second)
	for _, tg := range replaced {
		if tg.Labels["instance"] == victim.Labels["instance"] {
			t.Errorf("the replacement took the killed worker's instance %s while it was held", victim.Labels["instance"])
		}
	}
	checkCreated(t, stack, replaced, began)
	// The aggregator scraped after the replacement registered.
	afterKill := time.Now()
	stack.WaitScraped(t, job, afterKill, 30*time.Second)
	poll.Until(t, 10*time.Second, func() bool {
		ss, err := promtest.RawSamples(stack.PromURL, `app_requests_total{job="aggregator"}`, afterKill.Add(-2*time.Second), time.Now())
		return err == nil && len(ss) == 1 && ss[0].Samples[len(ss[0].Samples)-1].T > float64(afterKill.UnixNano())/1e9
	}, "Prometheus did not scrape the aggregator after the kill")
	end := time.Now()
	pids, instances := watch.Stop(t, stack, 2*numWorkers)

	log := srv.Log()
	recycles := strings.Count(log, "recycling after")
	t.Logf("%d worker lifetimes (%d recycles through max requests, 1 kill -9) on %d instances; %d workers exited without a final scrape",
		strings.Count(log, "workersd: registered pid"), recycles, instances, strings.Count(log, "no final scrape"))
	if recycles < 10 {
		t.Errorf("%d recycles: want at least 10", recycles)
	}
	if pids < numWorkers+10 {
		t.Errorf("%d workers in the targets file during the run: want at least %d", pids, numWorkers+10)
	}
	if pids <= instances {
		t.Errorf("%d workers on %d instances: no slot was reused, the created timestamps were not put to the test", pids, instances)
	}
	if strings.Contains(log, "registration failed") {
		t.Error("a worker failed to register; see the node log")
	}

	// (b) Exact totals from workersd's targets.
	from := began.Add(-5 * time.Second)
	truth := float64(ok + notFound)
	type figure struct {
		sel             string
		truth, raw, inc float64
	}
	figs := []figure{
		{sel: fmt.Sprintf(`app_requests_total{job=%q}`, job), truth: truth},
		{sel: fmt.Sprintf(`app_responses_total{job=%q}`, job), truth: truth},
		{sel: fmt.Sprintf(`app_responses_total{job=%q,code="404"}`, job), truth: float64(notFound)},
	}
	for i := range figs {
		f := &figs[i]
		var err error
		if f.raw, f.inc, err = promtest.Totals(stack.PromURL, f.sel, from, end); err != nil {
			t.Fatal(err)
		}
		t.Logf("%-44s truth %4.0f  raw samples %5.0f  sum(increase) %8.2f (%+.2f %%)", f.sel, f.truth, f.raw, f.inc, 100*(f.inc-f.truth)/f.truth)
		if f.raw != f.truth {
			t.Errorf("%s: reset-aware total of the raw samples %v, want exactly %v", f.sel, f.raw, f.truth)
			servertest.LogSeries(t, stack.PromURL, f.sel, from, end)
		}
	}

	// Every lifetime of a series starts from a 0 sample: a new worker on a
	// reused slot is seen through the zero Prometheus writes at its
	// counters' created timestamp.
	ss, err := promtest.RawSamples(stack.PromURL, figs[0].sel, from, end)
	if err != nil {
		t.Fatal(err)
	}
	resets := 0
	for _, s := range ss {
		prev := -1.0
		for _, p := range s.Samples {
			if p.V < prev {
				resets++
				if p.V != 0 {
					t.Errorf("%s: a restart on %s seen at %v, not at the created timestamp's 0", figs[0].sel, s.Metric["instance"], p.V)
				}
			}
			prev = p.V
		}
	}
	t.Logf("%d workers on %d instances: %d lifetimes began on a reused slot, %d of them through the created timestamp's 0", pids, instances, pids-instances, resets)

	// (e) The AggregatorRegistry's view of the same counter.
	agg := aggregatorFigures(t, stack, from, end, killed)
	t.Logf("AggregatorRegistry app_requests_total{job=\"aggregator\"}: last %.0f, max %.0f, %d drops (largest %.0f), reset-aware total %.0f, sum(increase) %.1f; failed scrapes %d of %d",
		agg.last, agg.max, agg.drops, agg.maxDrop, agg.raw, agg.inc, agg.failed, agg.scrapes)
	t.Logf("kill -9: the aggregator's total went from %.0f before the kill to %.0f after it", agg.beforeKill, agg.afterKill)
	t.Logf("| %d requests, %d recycles + 1 kill -9 | workersd: raw total %.0f (exact), sum(increase) %.1f | AggregatorRegistry: last %.0f, max %.0f, reset-aware total %.0f, sum(increase) %.1f |",
		requests, recycles, figs[0].raw, figs[0].inc, agg.last, agg.max, agg.raw, agg.inc)
	if agg.last >= truth || agg.drops == 0 {
		t.Errorf("the aggregator's counter did not drop (last %v, %d drops, truth %v): the comparison shows nothing", agg.last, agg.drops, truth)
	}
	if agg.afterKill >= agg.beforeKill {
		t.Errorf("the aggregator's total did not drop at the kill: %v before, %v after", agg.beforeKill, agg.afterKill)
	}

	// SIGTERM: every worker stops gracefully (final scrape, deregistration)
	// and the primary exits after them.
	if !srv.Stop(syscall.SIGTERM, 30*time.Second) {
		t.Fatal("the cluster did not exit within 30s of SIGTERM")
	}
	if n := len(stack.Targets(t)); n != 0 {
		t.Errorf("%d targets left after the cluster stopped", n)
	}
	if got := strings.Count(srv.Log(), "workersd: deregistered pid"); got < recycles+numWorkers {
		t.Errorf("%d deregistrations, want at least %d (recycles and the final stop)", got, recycles+numWorkers)
	}
}

// requireModules makes sure examples/node/node_modules holds what
// package-lock.json pins, and that workersd is the link to this tree's
// clients/node: npm ci when prom-client is missing.
func requireModules(t *testing.T) {
	t.Helper()
	if _, err := os.Stat(filepath.Join("node_modules", "prom-client", "package.json")); err != nil {
		npm := buildtest.RequireTool(t, "npm", "apt-get install npm")
		cmd := exec.Command(npm, "ci", "--no-audit", "--no-fund")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("npm ci in examples/node: %v\n%s", err, out)
		}
	}
	var pkg struct{ Version string }
	b, err := os.ReadFile(filepath.Join("node_modules", "prom-client", "package.json"))
	if err == nil {
		err = json.Unmarshal(b, &pkg)
	}
	if err != nil || !strings.HasPrefix(pkg.Version, "15.") {
		t.Fatalf("node_modules/prom-client is %q (%v), want 15.x: run npm ci in examples/node", pkg.Version, err)
	}
	link, err := filepath.EvalSymlinks(filepath.Join("node_modules", "workersd"))
	if err == nil {
		link, err = filepath.Abs(link)
	}
	want, err2 := filepath.Abs(filepath.Join("..", "..", "clients", "node"))
	if err != nil || err2 != nil || link != want {
		t.Fatalf("node_modules/workersd is %q (%v), not a link to %s: run npm ci in examples/node", link, err, want)
	}
}

// lastValue is the last sample of sel's series up to at (NaN if none).
func lastValue(t *testing.T, stack *servertest.Stack, sel string, at time.Time) float64 {
	t.Helper()
	ss, err := promtest.RawSamples(stack.PromURL, sel, at.Add(-time.Minute), at)
	if err != nil {
		t.Fatal(err)
	}
	v, last := math.NaN(), 0.0
	for _, s := range ss {
		for _, p := range s.Samples {
			if p.T >= last {
				v, last = p.V, p.T
			}
		}
	}
	return v
}

// checkCreated reads each live worker's OpenMetrics exposition: every
// series of the app's counters has a created timestamp, no earlier than
// the worker's start (what Prometheus writes its zero sample at, so that
// a reused slot's new lifetime counts from 0).
func checkCreated(t *testing.T, stack *servertest.Stack, ts []servertest.Target, began time.Time) {
	t.Helper()
	checked := 0
	startedAt := servertest.Started(t, stack.SdwriterURL)
	for _, tg := range ts {
		started, ok := startedAt[tg.Targets[0]]
		if !ok {
			t.Fatalf("sdwriter's status has no start for %+v", tg)
		}
		req, _ := http.NewRequest("GET", "http://"+tg.Targets[0]+"/metrics", nil)
		req.Header.Set("Accept", "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.2")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		body := string(b)
		if !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/openmetrics-text") || !strings.HasSuffix(body, "# EOF\n") {
			t.Fatalf("%s: not OpenMetrics (%s):\n%s", tg.Targets[0], resp.Header.Get("Content-Type"), body)
		}
		totals, created := 0, 0
		for line := range strings.SplitSeq(body, "\n") {
			name, value, _ := strings.Cut(line, " ")
			switch {
			case strings.HasPrefix(name, "app_") && strings.Contains(name, "_total"):
				totals++
			case strings.HasPrefix(name, "app_") && strings.Contains(name, "_created"):
				created++
				v, err := strconv.ParseFloat(value, 64)
				if err != nil {
					t.Fatalf("%s: %q: %v", tg.Targets[0], line, err)
				}
				if v < float64(started.Unix()) || v > float64(time.Now().Unix()+1) {
					t.Errorf("worker %d (started %s): %s = %s, not in its lifetime", tg.Pid(), started, name, time.Unix(int64(v), 0).UTC())
				}
				checked++
			}
		}
		if created != totals {
			t.Errorf("%s: %d app counter series, %d created timestamps:\n%s", tg.Targets[0], totals, created, body)
		}
	}
	if checked == 0 {
		t.Error("no created timestamp checked")
	}
}

type aggFigures struct {
	last, max, maxDrop, raw, inc float64
	drops                        int
	beforeKill, afterKill        float64
	scrapes, failed              int
}

// aggregatorFigures reads what Prometheus stored from the
// AggregatorRegistry: its request counter's samples and its scrapes' up.
func aggregatorFigures(t *testing.T, stack *servertest.Stack, from, end, killed time.Time) aggFigures {
	t.Helper()
	const sel = `app_requests_total{job="aggregator"}`
	ss, err := promtest.RawSamples(stack.PromURL, sel, from, end)
	if err != nil {
		t.Fatal(err)
	}
	if len(ss) != 1 {
		t.Fatalf("%s: %d series, want 1", sel, len(ss))
	}
	var f aggFigures
	if f.raw, f.inc, err = promtest.Totals(stack.PromURL, sel, from, end); err != nil {
		t.Fatal(err)
	}
	k := float64(killed.UnixNano()) / 1e9
	f.afterKill = math.Inf(1)
	prev := math.NaN()
	for _, p := range ss[0].Samples {
		f.max = max(f.max, p.V)
		if p.V < prev {
			f.drops++
			f.maxDrop = max(f.maxDrop, prev-p.V)
		}
		if p.T < k {
			f.beforeKill = p.V
		} else {
			f.afterKill = min(f.afterKill, p.V)
		}
		prev = p.V
		f.last = p.V
	}
	up, err := promtest.RawSamples(stack.PromURL, `up{job="aggregator"}`, from, end)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range up {
		for _, p := range s.Samples {
			f.scrapes++
			if p.V == 0 {
				f.failed++
			}
		}
	}
	return f
}
