//go:build linux

package integration

import (
	"fmt"
	"math"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/workersd/workersd/internal/testing/promtest"
	"github.com/workersd/workersd/registrar"
)

// Exact job-wide totals through restarts (issue 11), on the recommended
// setup: Prometheus 3.x with created-timestamp-zero-ingestion, and slot
// holds in the registrar.
//
// What is checked, for every counter and the histogram:
//   - the reset-aware total a reader of Prometheus' raw samples computes
//     (each series from 0; a drop is a reset, after which the new value
//     counts in full) equals the units processed, exactly;
//   - sum(increase(x[W])) over a window covering the whole run is within
//     2 % of it: Prometheus extrapolates each series that ends inside the
//     window by half its mean sample interval, the only allowed difference.
//
// Every lifetime here counts all its units before Prometheus first scrapes
// it, and each counts more than the one before: a restart is then visible
// only through the created timestamp's zero sample, never as a drop.

// testSlotHold covers Prometheus' default 5s discovery throttle and 5s
// scrape reload, one 100ms scrape interval and a margin.
const testSlotHold = 15 * time.Second

// lifetimeDwell keeps each lifetime scraped for ~40 samples after its first,
// so the end extrapolation of increase stays near 1 % (1/(2n) of a series
// that ends inside the window).
const lifetimeDwell = 4 * time.Second

type lifetime struct {
	units    int
	instance string
	killed   bool
	ended    time.Time // zero: still running at the end
}

// runLifetime starts one worker that counts units before its first scrape,
// waits until Prometheus has scraped all of them, keeps it scraped for
// lifetimeDwell, and stops it (kill -9 or gracefully) unless last.
func (e *env) runLifetime(job string, units int, hold time.Duration, kill, last bool) (lifetime, error) {
	w, err := e.startWorkerErr(workerOpts{job: job, host: "h", jobs: units, jobDuration: 100 * time.Microsecond, slotHold: hold})
	if err != nil {
		return lifetime{}, err
	}
	lt := lifetime{units: units, killed: kill}
	deadline := time.Now().Add(45 * time.Second)
	for lt.instance == "" {
		if time.Now().After(deadline) {
			return lt, fmt.Errorf("worker %s not in the targets file after 45s", w.addr)
		}
		if file, err := e.fileTargets(job); err == nil {
			lt.instance = file[w.addr].Labels["instance"]
		}
		time.Sleep(20 * time.Millisecond)
	}
	q := fmt.Sprintf(`demo_jobs_processed_total{job=%q,instance=%q}`, job, lt.instance)
	for {
		if time.Now().After(deadline) {
			return lt, fmt.Errorf("%s never reached %d in Prometheus", q, units)
		}
		if s, err := e.query(q, time.Time{}); err == nil && len(s) == 1 && s[0].V == float64(units) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(lifetimeDwell) // the lifetime's length, not a wait for a condition
	if last {
		return lt, nil
	}
	if kill {
		w.kill()
	} else if err := w.terminate(30 * time.Second); err != nil {
		return lt, err
	}
	lt.ended = time.Now()
	return lt, nil
}

// restartRun is one run of the restart scenario and what Prometheus made
// of it.
type restartRun struct {
	lifetimes          []lifetime
	start, end         time.Time
	instances, reused  int
	processed, started figures
}

// figures: the truth, the reset-aware total of the raw samples, and
// sum(increase) over the run.
type figures struct{ truth, raw, inc float64 }

func (f figures) String() string {
	return fmt.Sprintf("raw %.0f, increase %.1f (%+.1f %%), truth %.0f", f.raw, f.inc, 100*(f.inc-f.truth)/f.truth, f.truth)
}

// runRestarts runs perLane lifetimes on each of lanes lanes of one host,
// each counting more than the one before, before its first scrape; kill
// says which lifetimes end with kill -9 (the others stop gracefully). The
// last lifetime of each lane is still running at the end.
func (e *env) runRestarts(job string, lanes, perLane int, hold time.Duration, kill func(lane, k int) bool) restartRun {
	t := e.t
	t.Helper()
	r := restartRun{start: time.Now()}
	var (
		mu sync.Mutex
		wg sync.WaitGroup
	)
	errs := make([]error, lanes)
	for lane := range lanes {
		wg.Go(func() {
			for k := range perLane {
				lt, err := e.runLifetime(job, 100+200*k+lane, hold, kill(lane, k), k == perLane-1)
				if err != nil {
					errs[lane] = fmt.Errorf("lane %d lifetime %d: %w", lane, k, err)
					return
				}
				mu.Lock()
				r.lifetimes = append(r.lifetimes, lt)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	r.end = time.Now()
	perInstance := map[string]int{}
	for _, lt := range r.lifetimes {
		r.processed.truth += float64(lt.units)
		perInstance[lt.instance]++
	}
	r.started.truth = float64(len(r.lifetimes))
	r.instances = len(perInstance)
	for _, n := range perInstance {
		r.reused += n - 1
	}
	from := r.start.Add(-5 * time.Second)
	var err error
	if r.processed.raw, r.processed.inc, err = e.totals(fmt.Sprintf("demo_jobs_processed_total{job=%q}", job), from, r.end); err != nil {
		t.Fatal(err)
	}
	if r.started.raw, r.started.inc, err = e.totals(fmt.Sprintf("demo_worker_starts_total{job=%q}", job), from, r.end); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d lifetimes (%d killed) on %d instances, %d on a reused slot, in %s; units: %s; starts: %s",
		len(r.lifetimes), countKilled(r.lifetimes), r.instances, r.reused, r.end.Sub(r.start).Round(time.Second), r.processed, r.started)
	return r
}

// totals is promtest.Totals on this environment's Prometheus.
func (e *env) totals(sel string, start, end time.Time) (raw, inc float64, err error) {
	return promtest.Totals(e.promURL, sel, start, end)
}

// checkExact fails t unless f meets both criteria.
func checkExact(t *testing.T, what string, f figures) {
	t.Helper()
	if f.raw != f.truth {
		t.Errorf("%s: reset-aware total of the raw samples %v, want exactly %v", what, f.raw, f.truth)
	}
	if math.Abs(f.inc-f.truth) > 0.02*f.truth {
		t.Errorf("%s: sum(increase) over the run %v, want %v within 2 %%", what, f.inc, f.truth)
	}
}

// Graceful stops and kill -9 with an immediate replacement, on two lanes of
// one host: 16 lifetimes, 14 restarts, each lifetime counting more than the
// last before its first scrape; a low-rate counter counts 1 per lifetime.
// Slots are reused once their hold expires, and stay within the bound.
func TestExactTotalsThroughRestarts(t *testing.T) {
	prom := prom3()
	prom.interval = 100 * time.Millisecond
	e := newEnvWith(t, prom)
	const ttl = 2 * time.Second // workerOpts' default
	r := e.runRestarts("restarts", 2, 8, testSlotHold, func(lane, k int) bool { return (k+lane)%2 == 1 })
	checkExact(t, "demo_jobs_processed_total", r.processed)
	checkExact(t, "demo_worker_starts_total (1 per lifetime)", r.started)
	raw, inc, err := e.totals(`demo_job_duration_seconds_count{job="restarts"}`, r.start.Add(-5*time.Second), r.end)
	if err != nil {
		t.Fatal(err)
	}
	checkExact(t, "demo_job_duration_seconds_count", figures{truth: r.processed.truth, raw: raw, inc: inc})

	if r.reused == 0 {
		t.Error("no lifetime reused a slot: the created-timestamp path was not exercised")
	}
	var ends []time.Time
	for _, lt := range r.lifetimes {
		if !lt.ended.IsZero() {
			ends = append(ends, lt.ended)
		}
	}
	// A killed worker's key outlives it by up to a TTL: 2 per lane alive.
	if bound := registrar.MaxSlots(2*2, ends, ttl, testSlotHold); r.instances > bound {
		t.Errorf("%d instances, above the stated bound %d", r.instances, bound)
	}
}

func countKilled(lts []lifetime) int {
	n := 0
	for _, lt := range lts {
		if lt.killed {
			n++
		}
	}
	return n
}

// TestRestartMatrix measures the restart scenario on each Prometheus setup
// and writes the table of docs/RESTARTS.md to $WORKERSD_RESTART_MATRIX. It
// asserts nothing about the setups that are not recommended (the point is
// to show what each gives); scripts/bench runs it, CI does not.
func TestRestartMatrix(t *testing.T) {
	out := os.Getenv("WORKERSD_RESTART_MATRIX")
	if out == "" {
		t.Skip("set WORKERSD_RESTART_MATRIX=<file> (scripts/bench -sections restarts) to measure the matrix")
	}
	type setup struct {
		prom promSetup
		hold time.Duration
	}
	stStorage := prom3Plain()
	stStorage.name, stStorage.flags = "3.15 st-storage,use-start-timestamps", []string{"--enable-feature=st-storage,use-start-timestamps"}
	setups := []setup{
		{promDebian(), testSlotHold},
		{prom3Plain(), testSlotHold},
		{prom3(), -1},
		{stStorage, -1},
		{prom3(), testSlotHold},
	}
	var b strings.Builder
	fmt.Fprintf(&b, "| Prometheus | slot hold | graceful stop + replacement | kill -9 + replacement | low-rate counter (1 per lifetime) | instances |\n|---|---|---|---|---|---|\n")
	for _, s := range setups {
		s.prom.interval = 100 * time.Millisecond
		holdName := "off (reuse at once)"
		if s.hold > 0 {
			holdName = s.hold.String()
		}
		t.Run(s.prom.name+" hold "+holdName, func(t *testing.T) {
			e := newEnvWith(t, s.prom)
			g := e.runRestarts("graceful", 2, 6, s.hold, func(int, int) bool { return false })
			k := e.runRestarts("killed", 2, 6, s.hold, func(int, int) bool { return true })
			low := figures{truth: g.started.truth + k.started.truth, raw: g.started.raw + k.started.raw, inc: g.started.inc + k.started.inc}
			fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %d and %d for 12 lifetimes each |\n",
				s.prom.name, holdName, cell(g.processed), cell(k.processed), cell(low), g.instances, k.instances)
		})
	}
	if err := os.WriteFile(out, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
}

// cell renders figures for the matrix: exact (or not) from raw samples, and
// increase's deviation.
func cell(f figures) string {
	mark := "exact"
	if f.raw != f.truth {
		mark = fmt.Sprintf("**%.0f of %.0f** (%+.1f %%)", f.raw, f.truth, 100*(f.raw-f.truth)/f.truth)
	}
	return fmt.Sprintf("raw: %s; increase %+.1f %%", mark, 100*(f.inc-f.truth)/f.truth)
}
