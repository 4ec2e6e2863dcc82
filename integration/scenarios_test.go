package integration

import (
	"context"
	"fmt"
	"math"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Scenario 1: six workers on two hosts process known, different numbers of
// units; Prometheus' sum equals the exact total, every worker is up, each
// series has its stable identity and no volatile label, and the example
// rules evaluate without error.
func TestExactSums(t *testing.T) {
	e := newEnv(t)
	units := []int{17, 23, 31, 41, 53, 67}
	total := 0
	var ws []*worker
	for i, n := range units {
		host := "host-a"
		if i%2 == 1 {
			host = "host-b"
		}
		ws = append(ws, e.startWorker(workerOpts{job: "demo", host: host, jobs: n, rate: 50}))
		total += n
	}
	took := e.waitFileAddrs("demo", addrs(ws...), 15*time.Second)
	t.Logf("6 workers in the targets file %s after the last start", took.Round(time.Millisecond))
	for i, w := range ws {
		if err := w.waitProcessed(units[i], 30*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	took = e.waitScalar(`sum(demo_jobs_processed_total{job="demo"})`, float64(total), 40*time.Second)
	t.Logf("Prometheus sum = %d (exact) %s after the workers finished", total, took.Round(time.Millisecond))
	e.waitScalar(`count(up{job="demo"} == 1)`, 6, 20*time.Second)

	// Each worker's own series: the instance Prometheus stores is the
	// host/slot of the file, the value is exactly what that worker did.
	file, err := e.fileTargets("demo")
	if err != nil {
		t.Fatal(err)
	}
	byInstance := map[string]int{}
	for i, w := range ws {
		tg := file[w.addr]
		if want := tg.Labels["host"] + "/" + tg.Labels["worker"]; tg.Labels["instance"] != want {
			t.Errorf("worker %s: instance %q, want %q", w.addr, tg.Labels["instance"], want)
		}
		byInstance[tg.Labels["instance"]] = units[i]
	}
	got, err := e.query(`demo_jobs_processed_total{job="demo"}`, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(ws) {
		t.Fatalf("%d series of demo_jobs_processed_total, want %d: %v", len(got), len(ws), got)
	}
	for _, s := range got {
		if want, ok := byInstance[s.Metric["instance"]]; !ok || s.V != float64(want) {
			t.Errorf("series %v = %v, want %d", s.Metric, s.V, want)
		}
		if s.Metric["host"] == "" || s.Metric["worker"] == "" {
			t.Errorf("series %v lacks the host or worker label", s.Metric)
		}
		for name := range s.Metric {
			if strings.HasPrefix(name, "__meta") || name == "pid" || name == "port" {
				t.Errorf("series %v carries a volatile label %s", s.Metric, name)
			}
		}
	}

	// The per-host recording rule of examples/rules.yml exists for both
	// hosts, and no rule of the file fails to evaluate.
	e.waitScalar(`count(job_host:demo_jobs_processed:rate1m{job="demo"})`, 2, 20*time.Second)
	var rules struct {
		Groups []struct {
			Name  string `json:"name"`
			Rules []struct {
				Name      string `json:"name"`
				Health    string `json:"health"`
				LastError string `json:"lastError"`
			} `json:"rules"`
		} `json:"groups"`
	}
	if err := e.api("/api/v1/rules", nil, &rules); err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			n++
			if r.Health == "err" {
				t.Errorf("rule %s of group %s: %s", r.Name, g.Name, r.LastError)
			}
		}
	}
	if n == 0 {
		t.Error("Prometheus loaded no rule from examples/rules.yml")
	}
}

// Scenario 2: a worker killed with SIGKILL leaves the file within TTL + 2s
// and Prometheus' active targets after; its replacement gets the same
// instance label.
func TestCrashRemovesTarget(t *testing.T) {
	e := newEnv(t)
	const ttl = 2 * time.Second
	var ws []*worker
	for range 3 {
		ws = append(ws, e.startWorker(workerOpts{job: "crash", host: "h", ttl: ttl, jobs: 0, rate: 5}))
	}
	e.waitFileAddrs("crash", addrs(ws...), 15*time.Second)
	took := e.waitActiveUp("crash", addrs(ws...), 30*time.Second)
	t.Logf("3 workers up in Prometheus %s after they were in the file", took.Round(time.Millisecond))

	file, err := e.fileTargets("crash")
	if err != nil {
		t.Fatal(err)
	}
	victim := ws[1]
	instance := file[victim.addr].Labels["instance"]
	killed := time.Now()
	victim.kill()
	rest := []*worker{ws[0], ws[2]}
	gone := e.waitFileAddrs("crash", addrs(rest...), ttl+5*time.Second)
	if gone > ttl+2*time.Second {
		t.Errorf("killed worker left the file %s after kill -9, want within TTL %s + 2s", gone.Round(time.Millisecond), ttl)
	}
	t.Logf("kill -9 to removal from the targets file: %s (TTL %s)", gone.Round(time.Millisecond), ttl)
	e.waitActiveUp("crash", addrs(rest...), 30*time.Second)
	t.Logf("kill -9 to removal from Prometheus' active targets: %s", time.Since(killed).Round(time.Millisecond))

	repl := e.startWorker(workerOpts{job: "crash", host: "h", ttl: ttl, rate: 5})
	e.waitFileAddrs("crash", addrs(ws[0], ws[2], repl), 15*time.Second)
	file, err = e.fileTargets("crash")
	if err != nil {
		t.Fatal(err)
	}
	if got := file[repl.addr].Labels["instance"]; got != instance {
		t.Errorf("replacement registered as %q, want the killed worker's %q", got, instance)
	}
	e.waitActiveUp("crash", addrs(ws[0], ws[2], repl), 30*time.Second)
	active, err := e.activeTargets("crash")
	if err != nil {
		t.Fatal(err)
	}
	if got := active[repl.addr].Labels["instance"]; got != instance {
		t.Errorf("Prometheus scrapes the replacement as instance %q, want %q", got, instance)
	}
	e.waitScalar(`count(up{job="crash"} == 1)`, 3, 20*time.Second)
}

// Scenario 3: workers stopped with SIGTERM right after finishing their
// units: Prometheus' last values still sum to the exact total, because
// each worker waits for a final scrape before it deregisters.
func TestGracefulStopLosesNothing(t *testing.T) {
	e := newEnv(t)
	// Slow enough that every worker is still busy when Prometheus first
	// scrapes it, so its last increments reach Prometheus only through
	// the final scrape.
	units := []int{37, 53, 71, 89}
	total := 0
	var ws []*worker
	for _, n := range units {
		ws = append(ws, e.startWorker(workerOpts{job: "graceful", host: "h", jobs: n, rate: 10}))
		total += n
	}
	e.waitFileAddrs("graceful", addrs(ws...), 15*time.Second)

	var wg sync.WaitGroup
	errs := make([]error, len(ws))
	stopTook := make([]time.Duration, len(ws))
	for i, w := range ws {
		wg.Go(func() {
			if err := w.waitProcessed(units[i], 60*time.Second); err != nil {
				errs[i] = err
				return
			}
			start := time.Now()
			errs[i] = w.terminate(45 * time.Second)
			stopTook[i] = time.Since(start)
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("SIGTERM to exit (final scrape, then deregistration): %v", roundAll(stopTook))
	// Deregistered at once, not at lease expiry.
	e.waitFileAddrs("graceful", nil, 2*time.Second)

	q := `sum(last_over_time(demo_jobs_processed_total{job="graceful"}[10m]))`
	e.waitScalar(q, float64(total), 10*time.Second)
	t.Logf("%s = %d, the exact total", q, total)
}

func roundAll(ds []time.Duration) []string {
	var out []string
	for _, d := range ds {
		out = append(out, d.Round(time.Millisecond).String())
	}
	return out
}

// Scenario 4: 50 restarts of 4 workers. Every replacement takes the slot
// its predecessor freed, so the job never has more than 4 instance values
// (4 series of each metric over the whole run), and sum(increase(...)) over
// the run matches the units processed within 1 %.
//
// How the counts stay exact through counter resets: Prometheus' increase
// adds the last value before each reset, which the final scrape of a
// graceful stop provides; a reset is seen only if the new lifetime's first
// scraped value is below the old one's last. A lifetime here processes all
// its units before Prometheus can first scrape it (discovery takes seconds),
// so lifetimes process fewer units the later they start, and every series
// begins with an idle lifetime scraped at 0 (no extrapolation before it).
func TestChurnKeepsSeriesBounded(t *testing.T) {
	e := newEnv(t)
	const (
		slots    = 4
		restarts = 50
		minRun   = 120 * time.Second // keeps the end extrapolation of increase (< 1 scrape interval) under 1 %
	)
	units := func(k int) int { return 20 + 3*(restarts-k) } // k = 1..50: 167 down to 20

	runStart := time.Now()
	cur := make([]*worker, slots)
	for i := range cur {
		cur[i] = e.startWorker(workerOpts{job: "churn", host: "h", idle: true})
	}
	e.waitFileAddrs("churn", addrs(cur...), 15*time.Second)
	e.waitScalar(`count(demo_jobs_processed_total{job="churn"} == 0)`, slots, 30*time.Second)
	firstScraped := time.Now()

	var (
		mu        sync.Mutex
		reserved  int // restarts taken by a slot loop
		started   int // lifetimes started after the idle ones
		expected  int // units all of them process
		lifetimes []time.Duration
	)
	var wg sync.WaitGroup
	errs := make([]error, slots)
	for i := range slots {
		wg.Go(func() {
			w := cur[i]
			born := time.Now()
			for {
				mu.Lock()
				if reserved == restarts {
					mu.Unlock()
					break
				}
				reserved++
				mu.Unlock()
				if err := w.waitProcessed(w.opts.jobs, 60*time.Second); err != nil {
					errs[i] = err
					return
				}
				if err := w.terminate(45 * time.Second); err != nil {
					errs[i] = err
					return
				}
				// Started under the lock, in the order of k: a lifetime
				// never follows one that processes fewer units.
				mu.Lock()
				lifetimes = append(lifetimes, time.Since(born))
				started++
				n := units(started)
				expected += n
				nw, err := e.startWorkerErr(workerOpts{job: "churn", host: "h", jobs: n, jobDuration: time.Millisecond})
				mu.Unlock()
				if err != nil {
					errs[i] = err
					return
				}
				w, born = nw, time.Now()
			}
			// The last lifetime of the slot stays, idle once done.
			errs[i] = w.waitProcessed(w.opts.jobs, 60*time.Second)
			cur[i] = w
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	churn := time.Since(firstScraped)
	var sum time.Duration
	for _, d := range lifetimes {
		sum += d
	}
	t.Logf("%d restarts of %d workers in %s; mean lifetime %s (mostly Prometheus discovering the target before the final scrape)",
		started, slots, churn.Round(time.Millisecond), (sum / time.Duration(len(lifetimes))).Round(time.Millisecond))
	if started != restarts {
		t.Fatalf("%d restarts, want %d", started, restarts)
	}
	final := 0
	for _, w := range cur {
		final += w.opts.jobs
	}
	// The last lifetimes' values are in Prometheus.
	e.waitScalar(`sum(demo_jobs_processed_total{job="churn"})`, float64(final), 30*time.Second)
	if wait := minRun - time.Since(firstScraped); wait > 0 {
		time.Sleep(wait) // the scenario's length, not a wait for a condition
	}

	// T_end: the latest scrape, so no series ends more than one scrape
	// interval before the range does.
	last, err := e.query(`timestamp(demo_jobs_processed_total{job="churn"})`, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	if len(last) != slots {
		t.Fatalf("%d series at the end, want %d: %v", len(last), slots, last)
	}
	rangeStart := runStart.Add(-5 * time.Second)
	end := 0.0
	for _, s := range last {
		end = math.Max(end, s.V)
	}
	endT := time.Unix(0, int64(end*1e9))
	rng := promRange(endT.Sub(rangeStart))

	// Series stay bounded: 4 instances, 4 series over the whole run.
	ser, err := e.seriesLabels(`demo_jobs_processed_total{job="churn"}`, rangeStart, endT)
	if err != nil {
		t.Fatal(err)
	}
	var instances []string
	for _, l := range ser {
		instances = append(instances, l["instance"])
	}
	if want := []string{"h/0", "h/1", "h/2", "h/3"}; !equalSorted(instances, want) {
		t.Errorf("series of the job over the run have instances %v, want %v", instances, want)
	}
	rs, err := e.queryRange(`count(count by (instance) (demo_jobs_processed_total{job="churn"}))`, runStart, endT, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	maxCount := 0.0
	for _, s := range rs {
		for _, p := range s.Points {
			maxCount = math.Max(maxCount, p.V)
		}
	}
	if maxCount != slots {
		t.Errorf("count(count by (instance) (...)) over the run peaked at %v, want %d", maxCount, slots)
	}

	// The criterion: sum(increase) over the run, within 1 %.
	q := fmt.Sprintf(`sum(increase(demo_jobs_processed_total{job="churn"}[%s]))`, rng)
	got, err := e.query(q, endT)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 {
		t.Fatalf("%s: %v", q, got)
	}
	errPct := 100 * (got[0].V - float64(expected)) / float64(expected)
	t.Logf("%s = %.2f for %d units processed (%+.3f %%)", q, got[0].V, expected, errPct)
	if math.Abs(errPct) > 1 {
		t.Errorf("sum(increase) = %.2f, want %d within 1 %%", got[0].V, expected)
	}

	// Exactly, without extrapolation: each series' increase evaluated at
	// its own last sample, over a range that starts before its first (a 0).
	exact := 0.0
	for _, s := range last {
		at := time.Unix(0, int64(s.V*1e9))
		q := fmt.Sprintf(`increase(demo_jobs_processed_total{job="churn",instance=%q}[%s])`, s.Metric["instance"], promRange(at.Sub(rangeStart)))
		v, err := e.query(q, at)
		if err != nil || len(v) != 1 {
			t.Fatalf("%s: %v %v", q, v, err)
		}
		exact += v[0].V
	}
	if math.Abs(exact-float64(expected)) > 1e-6*float64(expected) {
		t.Errorf("per-series increase at each series' last sample sums to %v, want exactly %d: a final value was not scraped or a counter reset was missed", exact, expected)
	}
	t.Logf("per-series increase without extrapolation: %v (exact: %d)", exact, expected)
}

// promRange renders d as a PromQL range, in whole milliseconds.
func promRange(d time.Duration) string {
	return strconv.FormatInt(d.Milliseconds(), 10) + "ms"
}

func equalSorted(a, b []string) bool {
	return strings.Join(sorted(a), ",") == strings.Join(sorted(b), ",")
}

var _ = context.Background
var _ = syscall.SIGKILL
