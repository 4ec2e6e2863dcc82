//go:build linux

package puma

import (
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/workersd/workersd/examples/internal/rubytest"
	"github.com/workersd/workersd/internal/testing/buildtest"
	"github.com/workersd/workersd/internal/testing/etcdtest"
	"github.com/workersd/workersd/internal/testing/poll"
	"github.com/workersd/workersd/internal/testing/promtest"
	"github.com/workersd/workersd/internal/testing/servertest"
	"github.com/workersd/workersd/registrar"
)

// stackOptions are the harness' defaults, spelled out: the test waits for
// a hold to end.
var stackOptions = servertest.Options{TTL: 5 * time.Second, SlotHold: 15 * time.Second}

const (
	job        = "puma"
	numWorkers = 4
	// A steady 40 requests a second, spread over the workers by the
	// kernel's accept queue.
	requestEvery = 25 * time.Millisecond
	minRecycles  = 10
)

// Real Puma in cluster mode, 4 workers registering through the Ruby client
// (clients/ruby) with the agent, discovered by sdwriter, scraped by
// Prometheus 3 with created-timestamp-zero-ingestion:
//
//   - Puma starts, restarts its workers and serves requests while the agent
//     is down; every worker is in the targets file, on its own instance,
//     within 5 s of the agent's return;
//   - through phased restarts (SIGUSR1) and SIGTERMs of single workers, at
//     least 10 worker recycles, Prometheus' reset-aware total of the raw
//     samples of the request counter, and of the 404 series of the
//     per-status counter, equals what the client was answered, exactly;
//   - a worker killed with SIGKILL leaves the targets file within 1 s.
func TestPumaExactTotals(t *testing.T) {
	stack := servertest.Start(t, stackOptions)
	// The agent is down while Puma starts and while a phased restart
	// replaces every worker: registration must not hold a worker up (nor
	// its exit, unregistered), and must happen once the agent is back.
	stack.StopAgent(t)
	p := startPuma(t, stack, false)
	srv := p.srv
	waitLog(t, srv, 30*time.Second, func(log string) bool {
		return strings.Count(log, "booted in") == numWorkers && strings.Count(log, "workersd: agent unreachable") == numWorkers
	}, "%d Puma workers did not boot and try the agent", numWorkers)
	if err := srv.Cmd.Process.Signal(syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	phased := time.Now()
	waitLog(t, srv, 30*time.Second, func(log string) bool {
		return len(phase1.FindAllString(log, -1)) == numWorkers &&
			strings.Count(log, "workersd: agent unreachable") == 2*numWorkers
	}, "the phased restart did not replace the %d unregistered workers", numWorkers)
	t.Logf("with the agent down: Puma started, and a phased restart replaced its %d workers in %s", numWorkers, time.Since(phased).Round(time.Millisecond))
	// Requests answered by workers not registered yet count too: the first
	// scrape after the registration carries them, from the counters' created
	// timestamps. 80 of them keep the agent away for 2s, long enough for the
	// workers' retries to reach their longest pause (1s).
	d := rubytest.StartDriver(t, p.bind, requestEvery)
	poll.Until(t, 30*time.Second, func() bool { return d.Answered() >= 80 }, "Puma did not answer 80 requests")
	back := time.Now()
	stack.StartAgent(t)
	first := stack.WaitTargets(t, numWorkers, 5*time.Second)
	registeredIn := time.Since(back)
	if registeredIn > 5*time.Second {
		t.Fatalf("the %d workers were in the targets file %s after the agent's start, want within 5s", numWorkers, registeredIn)
	}
	t.Logf("all %d workers in the targets file %s after the agent's start", numWorkers, registeredIn.Round(time.Millisecond))
	for _, tg := range first {
		// A path of the worker's own (16 hex digits, docs/KEYS.md): a
		// scrape of a gone worker's address, which another process may have
		// bound since, fails.
		if !ownPath.MatchString(tg.Labels["__metrics_path__"]) || tg.Pid() == 0 {
			t.Errorf("worker %d: metrics path %q, want /metrics/<pid>-<16 hex>", tg.Pid(), tg.Labels["__metrics_path__"])
		}
	}
	// Worker recycles while requests flow: Puma has no max-requests, so
	// a phased restart replaces every worker one by one, and a SIGTERM
	// replaces one.
	p.recycle(t, stack, d, first, []string{"phased", "term", "term", "phased", "term", "term"})
}

// With preload_app!, the workers inherit the master's metrics (and its
// counts: the application's load) and start them anew; Puma refuses phased
// restarts, so the workers are recycled by SIGTERM, one at a time.
func TestPumaPreloadExactTotals(t *testing.T) {
	stack := servertest.Start(t, stackOptions)
	p := startPuma(t, stack, true)
	first := stack.WaitTargets(t, numWorkers, 30*time.Second)
	d := rubytest.StartDriver(t, p.bind, requestEvery)
	p.recycle(t, stack, d, first, nil)
}

type pumaRun struct {
	srv     *servertest.Proc
	bind    string
	began   time.Time
	preload bool
}

// startPuma starts Puma with examples/puma's configuration, preload_app!
// or not.
func startPuma(t *testing.T, stack *servertest.Stack, preload bool) *pumaRun {
	t.Helper()
	puma := buildtest.RequireTool(t, "puma", "apt-get install puma")
	rubytest.RequireLib(t, "prometheus/client", "apt-get install ruby-prometheus-client-mmap")
	bind := etcdtest.FreeAddr(t)
	began := time.Now()
	env := append(stack.Env(),
		"RUBYLIB="+rubytest.ClientLib(t),
		"PUMA_BIND=tcp://"+bind,
		"PUMA_WORKERS="+strconv.Itoa(numWorkers),
		"WORKERSD_JOB="+job,
		"APP_BOOT_EPOCH_MS="+strconv.FormatInt(began.UnixMilli(), 10))
	if preload {
		env = append(env, "PUMA_PRELOAD=1")
	}
	srv := servertest.Run(t, stack.Dir, "puma", env, puma, "-C", "puma.rb")
	return &pumaRun{srv: srv, bind: bind, began: began, preload: preload}
}

// recycle runs the steps ("phased": SIGUSR1 to the master, "term": SIGTERM
// to one worker) while d sends requests, then SIGTERMs single workers until
// there have been minRecycles and two replacements took an instance
// another worker had held (once its hold ended); then it kills a worker
// with SIGKILL and checks what Prometheus stored against what Puma
// answered.
func (p *pumaRun) recycle(t *testing.T, stack *servertest.Stack, d *rubytest.Driver, first []servertest.Target, steps []string) {
	t.Helper()
	watch := stack.Watch(numWorkers)
	slots := newSlotLog(first)
	live := pids(first)
	recycles := 0
	recycleStart := time.Now()
	step := func(step string) {
		var gone []int
		switch step {
		case "phased":
			if err := p.srv.Cmd.Process.Signal(syscall.SIGUSR1); err != nil {
				t.Fatal(err)
			}
			gone = keys(live)
		case "term":
			// The oldest worker: Prometheus scrapes it already, so its
			// final scrape comes at once and the recycles stay within one
			// hold window (a young one waits for discovery, up to 5 s).
			victim := slots.oldest(live)
			if err := syscall.Kill(victim, syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
			gone = []int{victim}
		}
		stepStart := time.Now()
		live = waitReplaced(t, stack, gone, slots, 60*time.Second)
		recycles += len(gone)
		t.Logf("%s: %d worker(s) replaced in %s", step, len(gone), time.Since(stepStart).Round(time.Millisecond))
	}
	for _, s := range steps {
		step(s)
	}
	for recycles < minRecycles {
		step("term")
	}
	// A slot freed by a recycle is held, at most for the hold window (plus
	// etcd's lag in expiring a lease, under a second); the replacements
	// took fresh ones. Once the window has passed, two more recycles take
	// instances other workers held before them.
	holdEnd := time.Now().Add(registrar.HoldWindow(stackOptions.TTL, stackOptions.SlotHold) + 2*time.Second)
	time.Sleep(time.Until(holdEnd))
	for reused, _ := slots.counts(); reused < 2; reused, _ = slots.counts() {
		if time.Since(holdEnd) > 30*time.Second {
			t.Fatalf("%d recycles after the hold window, %d on a reused instance, want 2", recycles, reused)
		}
		step("term")
	}
	ok, notFound, failed := d.Stop()
	lastRequest := time.Now()
	t.Logf("%d worker recycles in %s; %d requests answered (%d 200, %d 404), %d failed in transport",
		recycles, time.Since(recycleStart).Round(time.Millisecond), ok+notFound, ok, notFound, len(failed))
	if recycles < minRecycles {
		t.Errorf("%d worker recycles, want at least %d", recycles, minRecycles)
	}
	// A connection Puma accepts as a worker stops, before the request's
	// bytes arrive, is closed unanswered (Puma's reactor at shutdown): the
	// application never saw it, so it is not in the truth. More than a few
	// would be something else.
	if len(failed) > (ok+notFound)/100 {
		t.Errorf("%d requests failed: %v", len(failed), failed)
	} else if len(failed) > 0 {
		t.Logf("failed: %v", failed)
	}
	reused, fresh := slots.counts()
	t.Logf("registrations on a reused instance: %d, on a fresh one: %d", reused, fresh)
	if reused < 2 || fresh == 0 {
		t.Errorf("want workers on reused instances and on fresh ones, got %d and %d: %v", reused, fresh, slots.byInstance)
	}

	// Every count of the live workers reaches Prometheus at its next
	// scrape; the kill -9 comes after, so the victim's counts are known.
	stack.WaitScraped(t, job, lastRequest, 30*time.Second)
	victim := stack.Targets(t)[0]
	gone := stack.KillWorker(t, victim)
	t.Logf("kill -9 of worker %d: gone from the targets file after %s (polled every %s)", victim.Pid(), gone.Round(time.Millisecond), poll.Interval)
	for _, tg := range stack.WaitTargets(t, numWorkers, 30*time.Second) {
		if tg.Labels["instance"] == victim.Labels["instance"] {
			t.Errorf("the killed worker's replacement took its instance %s while it was held", victim.Labels["instance"])
		}
	}
	checkCreated(t, stack, p.began)
	// The replacement's counts (its load of the application) reach
	// Prometheus too.
	stack.WaitScraped(t, job, time.Now(), 30*time.Second)
	end := time.Now()
	workers, instances := watch.Stop(t, stack, numWorkers)
	t.Logf("%d workers on %d instances", workers, instances)

	log := p.srv.Log()
	units, loads := p.truthFromLog(t, log)
	start := p.began.Add(-5 * time.Second)
	for _, c := range []struct {
		sel   string
		truth int
	}{
		{fmt.Sprintf(`app_requests_total{job=%q,code="200"}`, job), ok},
		{fmt.Sprintf(`app_requests_total{job=%q,code="404"}`, job), notFound},
		{fmt.Sprintf(`app_request_duration_seconds_count{job=%q}`, job), ok + notFound},
		{fmt.Sprintf(`app_request_duration_seconds_bucket{job=%q,le="+Inf"}`, job), ok + notFound},
		{fmt.Sprintf(`app_boot_units_total{job=%q}`, job), units},
		{fmt.Sprintf(`app_loads_total{job=%q}`, job), loads},
	} {
		got := stack.Total(t, c.sel, start, end)
		t.Logf("%-60s truth %8d  reset-aware total of the raw samples %9.0f", c.sel, c.truth, got)
		if got != float64(c.truth) {
			t.Errorf("%s: Prometheus' total %v, want exactly %d", c.sel, got, c.truth)
			servertest.LogSeries(t, stack.PromURL, c.sel, start, end)
		}
	}
	checkEveryType(t, stack, start, end)
	for _, bad := range []string{"registration failed", "no final scrape", "deregistration of", "/metrics fails", "final scrape of"} {
		if strings.Contains(log, "workersd: "+bad) {
			t.Errorf("the Puma log says %q", bad)
		}
	}
}

var (
	bootUnits = regexp.MustCompile(`(?m)^boot units (\d+) in pid (\d+)$`)
	appLoaded = regexp.MustCompile(`(?m)^app loaded in pid (\d+)$`)
	// The client's line once a worker is registered.
	registeredPid = regexp.MustCompile(`(?m)^workersd: registered pid (\d+) `)
	ownPath       = regexp.MustCompile(`^/metrics/\d+-[0-9a-f]{16}$`)
)

// truthFromLog is what the registered workers counted, from their log
// lines: the units each counted at its first request, and how many loaded
// the application (the master's load, with preload_app!, is not a
// worker's; workers replaced while the agent was down never registered).
func (p *pumaRun) truthFromLog(t *testing.T, log string) (units, loads int) {
	t.Helper()
	registered := map[string]bool{}
	for _, m := range registeredPid.FindAllStringSubmatch(log, -1) {
		registered[m[1]] = true
	}
	for _, m := range bootUnits.FindAllStringSubmatch(log, -1) {
		n, _ := strconv.Atoi(m[1])
		if registered[m[2]] {
			units += n
		}
	}
	master := strconv.Itoa(p.srv.Cmd.Process.Pid)
	for _, m := range appLoaded.FindAllStringSubmatch(log, -1) {
		if m[1] != master && registered[m[1]] {
			loads++
		}
	}
	if p.preload && loads != 0 {
		t.Errorf("with preload_app!, %d workers loaded the application", loads)
	}
	if !p.preload && loads == 0 {
		t.Error("no worker logged its load of the application")
	}
	return units, loads
}

// checkEveryType checks that each successful scrape of a worker carried
// every type: the counter, the histogram and the gauge.
func checkEveryType(t *testing.T, stack *servertest.Stack, start, end time.Time) {
	t.Helper()
	type key struct {
		instance string
		t        float64
	}
	scrapes := map[key]bool{}
	ups, err := promtest.RawSamples(stack.PromURL, fmt.Sprintf(`up{job=%q}`, job), start, end)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range ups {
		for _, x := range s.Samples {
			if x.V == 1 {
				scrapes[key{s.Metric["instance"], x.T}] = true
			}
		}
	}
	for _, sel := range []string{`app_requests_total{code="200"}`, `app_request_duration_seconds_bucket{le="0.1"}`, `app_requests_in_flight`} {
		ss, err := promtest.RawSamples(stack.PromURL, sel, start, end)
		if err != nil {
			t.Fatal(err)
		}
		have := map[key]bool{}
		for _, s := range ss {
			for _, x := range s.Samples {
				have[key{s.Metric["instance"], x.T}] = true
			}
		}
		missing := 0
		for k := range scrapes {
			if !have[k] {
				missing++
			}
		}
		if missing > 0 {
			t.Errorf("%s missing from %d of %d successful scrapes", sel, missing, len(scrapes))
		}
	}
	t.Logf("the counter, the histogram and the gauge in each of %d successful scrapes", len(scrapes))
}

// slotLog records which workers each instance held.
type slotLog struct {
	byInstance map[string]map[int]bool
	seen       map[int]int // pid: order of its first sighting
}

func newSlotLog(ts []servertest.Target) *slotLog {
	l := &slotLog{byInstance: map[string]map[int]bool{}, seen: map[int]int{}}
	l.add(ts)
	return l
}

func (l *slotLog) add(ts []servertest.Target) {
	for _, tg := range ts {
		if _, ok := l.seen[tg.Pid()]; !ok {
			l.seen[tg.Pid()] = len(l.seen)
		}
		in := tg.Labels["instance"]
		if l.byInstance[in] == nil {
			l.byInstance[in] = map[int]bool{}
		}
		l.byInstance[in][tg.Pid()] = true
	}
}

// oldest is the live worker registered first.
func (l *slotLog) oldest(live map[int]bool) int {
	best, order := 0, -1
	for pid := range live {
		if o := l.seen[pid]; order < 0 || o < order {
			best, order = pid, o
		}
	}
	return best
}

// counts is how many registrations took an instance another worker had
// held, and how many one that none had.
func (l *slotLog) counts() (reused, fresh int) {
	for _, ps := range l.byInstance {
		fresh++
		reused += len(ps) - 1
	}
	return reused, fresh
}

// phase1 is Puma's line for a worker booted by the first phased restart.
var phase1 = regexp.MustCompile(`booted in [0-9.]+s, phase: 1\b`)

// waitLog polls the process' log until cond holds.
func waitLog(t *testing.T, p *servertest.Proc, timeout time.Duration, cond func(string) bool, format string, args ...any) {
	t.Helper()
	var log string
	poll.Until(t, timeout, func() bool {
		log = p.Log()
		return cond(log)
	}, format+"; log:\n%s", append(args, poll.Latest(&log))...)
}

// waitReplaced waits until none of the gone workers is in the targets file
// and numWorkers are, and returns the live workers' pids.
func waitReplaced(t *testing.T, stack *servertest.Stack, gone []int, slots *slotLog, timeout time.Duration) map[int]bool {
	t.Helper()
	var live map[int]bool
	var seen string
	poll.Until(t, timeout, func() bool {
		ts := stack.Targets(t)
		slots.add(ts)
		live = pids(ts)
		seen = fmt.Sprint(ts)
		if len(live) != numWorkers {
			return false
		}
		for _, pid := range gone {
			if live[pid] {
				return false
			}
		}
		return true
	}, "workers %v not replaced; targets: %s", gone, poll.Latest(&seen))
	return live
}

func pids(ts []servertest.Target) map[int]bool {
	m := map[int]bool{}
	for _, tg := range ts {
		m[tg.Pid()] = true
	}
	return m
}

func keys(m map[int]bool) []int {
	out := make([]int, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}

// checkCreated reads each live worker's created timestamps from its
// OpenMetrics exposition: a counter that started before its worker did
// (created in the master and inherited) would make Prometheus drop the
// zero sample that marks the worker's restart on a reused instance.
func checkCreated(t *testing.T, stack *servertest.Stack, began time.Time) {
	t.Helper()
	startedAt := servertest.Started(t, stack.SdwriterURL)
	for _, tg := range stack.Targets(t) {
		started, ok := startedAt[tg.Targets[0]]
		if !ok {
			t.Fatalf("sdwriter's status has no start for %+v", tg)
		}
		// The metrics are defined in the master (metrics.rb): a worker
		// serves them from its first scrape.
		var body string
		var created map[string]float64
		body = openMetrics(t, tg.Targets[0])
		created = createdTimestamps(t, body)
		for _, want := range []string{`app_requests_created{code="200"}`, `app_requests_created{code="404"}`, `app_request_duration_seconds_created`, `app_loads_created`} {
			if _, ok := created[want]; !ok {
				t.Errorf("worker %d: no %s in:\n%s", tg.Pid(), want, body)
			}
		}
		for name, ts := range created {
			// started_at has whole seconds.
			if ts < float64(started.Unix()) || ts < float64(began.Unix()) {
				t.Errorf("worker %d (started %s): %s %.3f, before the worker started", tg.Pid(), started, name, ts)
			}
		}
	}
}

// createdTimestamps are the app_ series' created timestamps in an
// OpenMetrics exposition, by series.
func createdTimestamps(t *testing.T, body string) map[string]float64 {
	t.Helper()
	out := map[string]float64{}
	for line := range strings.SplitSeq(body, "\n") {
		name, value, found := strings.Cut(line, " ")
		if !found || !strings.HasPrefix(name, "app_") || !strings.Contains(name, "_created") {
			continue
		}
		v, err := strconv.ParseFloat(value, 64)
		if err != nil {
			t.Fatalf("%q: %v", line, err)
		}
		out[name] = v
	}
	return out
}

func openMetrics(t *testing.T, addr string) string {
	t.Helper()
	req, err := http.NewRequest("GET", "http://"+addr+"/metrics", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Accept", "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("scrape %s: %v", addr, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("scrape %s: %v", addr, err)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/openmetrics-text") {
		t.Errorf("scrape %s: Content-Type %q, want OpenMetrics", addr, ct)
	}
	return string(b)
}
