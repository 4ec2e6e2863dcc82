//go:build linux

package integration

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/workersd/workersd/registrar"
)

// Scenario 1: six workers on two hosts process known, different numbers of
// units; Prometheus' sum equals the exact total, every worker is up, each
// series has its stable identity and no volatile label, and the example
// rules evaluate without error.
//
// It runs Debian's Prometheus 2.42, the compatibility check: without
// restarts, every setup is exact.
func TestExactSums(t *testing.T) {
	e := newEnvWith(t, promDebian())
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
// and Prometheus' active targets after; its replacement, started while the
// killed worker's slot is held, gets an instance label of its own.
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
	replInstance := file[repl.addr].Labels["instance"]
	if replInstance == instance || replInstance == file[ws[0].addr].Labels["instance"] || replInstance == file[ws[2].addr].Labels["instance"] {
		t.Errorf("replacement registered as %q: the killed worker's %q is held, the others live", replInstance, instance)
	}
	e.waitActiveUp("crash", addrs(ws[0], ws[2], repl), 30*time.Second)
	active, err := e.activeTargets("crash")
	if err != nil {
		t.Fatal(err)
	}
	if got := active[repl.addr].Labels["instance"]; got != replInstance {
		t.Errorf("Prometheus scrapes the replacement as instance %q, want %q", got, replInstance)
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

// Scenario 4: 52 restarts of 4 workers (one in four killed), each lifetime
// counting more than the one before it before its first scrape. Series stay
// bounded: the instances the job uses, in the targets file and in
// Prometheus, stay within registrar.MaxSlots (4 plus the registrations that
// ended within any hold window), and the totals stay exact.
//
// Before slot holds, a replacement took its predecessor's slot at once and
// this scenario kept exactly 4 instances, but only because each lifetime
// counted less than the one before: Prometheus missed every restart whose
// new count passed the old one before the first scrape (issue 11).
func TestChurnKeepsSeriesBounded(t *testing.T) {
	prom := prom3()
	prom.interval = 100 * time.Millisecond
	e := newEnvWith(t, prom)
	const (
		slots   = 4
		perLane = 14
		ttl     = 2 * time.Second // workerOpts' default
	)
	r := e.runRestarts("churn", slots, perLane, testSlotHold, func(lane, k int) bool { return (k+lane)%4 == 3 })
	if restarts := len(r.lifetimes) - slots; restarts < 50 {
		t.Fatalf("%d restarts, want at least 50", restarts)
	}
	checkExact(t, "demo_jobs_processed_total", r.processed)
	checkExact(t, "demo_worker_starts_total (1 per lifetime)", r.started)

	var ends []time.Time
	for _, lt := range r.lifetimes {
		if !lt.ended.IsZero() {
			ends = append(ends, lt.ended)
		}
	}
	// A killed worker's key outlives it by up to a TTL: 2 per lane alive.
	bound := registrar.MaxSlots(2*slots, ends, ttl, testSlotHold)
	ser, err := e.seriesLabels(`demo_jobs_processed_total{job="churn"}`, r.start.Add(-5*time.Second), r.end)
	if err != nil {
		t.Fatal(err)
	}
	inProm := map[string]bool{}
	for _, l := range ser {
		inProm[l["instance"]] = true
	}
	t.Logf("%d lifetimes on %d instances (%d series in Prometheus); the stated bound: %d", len(r.lifetimes), r.instances, len(inProm), bound)
	if r.instances > bound || len(inProm) > bound {
		t.Errorf("%d instances in the file, %d in Prometheus, above the stated bound %d", r.instances, len(inProm), bound)
	}
	if len(inProm) != r.instances {
		t.Errorf("Prometheus has series of %d instances, the file had %d", len(inProm), r.instances)
	}
}

// promRange renders d as a PromQL range, in whole milliseconds.
func promRange(d time.Duration) string {
	return strconv.FormatInt(d.Milliseconds(), 10) + "ms"
}

func equalSorted(a, b []string) bool {
	return strings.Join(sorted(a), ",") == strings.Join(sorted(b), ",")
}

// Scenario 5: the etcd leader is killed with SIGKILL. No target is ever
// missing from the file, and every worker is still registered (same keys)
// after the new leader is elected and three TTLs have passed.
func TestEtcdLeaderKilled(t *testing.T) {
	e := newEnv(t)
	const ttl = 3 * time.Second
	var ws []*worker
	for range 4 {
		ws = append(ws, e.startWorker(workerOpts{job: "leader", host: "h", ttl: ttl, rate: 5}))
	}
	want := addrs(ws...)
	e.waitFileAddrs("leader", want, 15*time.Second)
	e.waitActiveUp("leader", want, 30*time.Second)
	ctx := context.Background()
	cli := e.cluster.client()
	before, err := registrations(ctx, cli, "leader")
	if err != nil {
		t.Fatal(err)
	}

	watch := e.watchFile(5*time.Millisecond, exactly("leader", want))
	var leader int
	eventually(t, 10*time.Second, "a leader all members agree on", func() (bool, string) {
		l, err := e.cluster.leader(ctx, cli)
		if err != nil {
			return false, err.Error()
		}
		leader = l
		return true, ""
	})
	old := e.cluster.members[leader]
	e.cluster.members[leader].p.kill()
	took := eventually(t, 30*time.Second, "a new leader", func() (bool, string) {
		l, err := e.cluster.leader(ctx, cli)
		if err != nil {
			return false, err.Error()
		}
		return l != leader, "still " + e.cluster.members[l].name
	})
	t.Logf("kill -9 of the leader %s to a new leader agreed on: %s", old.name, took.Round(time.Millisecond))
	// Three TTLs: a worker whose keep-alives failed would have lost its key.
	time.Sleep(3 * ttl)
	watch.Stop()
	t.Logf("targets file read %d times from before the kill to 3 TTLs after", watch.reads)
	if watch.failures > 0 {
		t.Errorf("%d of %d reads of the targets file lacked a worker or failed; first: %v", watch.failures, watch.reads, watch.problems)
	}
	after, err := registrations(ctx, cli, "leader")
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(after) != fmt.Sprint(before) {
		t.Errorf("registrations changed across the leader change:\nbefore %v\nafter  %v", before, after)
	}
	e.waitActiveUp("leader", want, 10*time.Second)

	// The killed member rejoins on its data; later checks see 3 members.
	e.cluster.start(leader)
	eventually(t, 30*time.Second, "three members agreeing on a leader", func() (bool, string) {
		_, err := e.cluster.leader(ctx, cli)
		return err == nil, fmt.Sprint(err)
	})
	e.waitFileAddrs("leader", want, 5*time.Second)
}

// exactly is a fileWatch check: the file is valid and holds exactly want
// for job.
func exactly(job string, want []string) func([]target, []byte, error) error {
	return func(ts []target, _ []byte, err error) error {
		if err != nil {
			return err
		}
		var have []string
		for _, t := range ts {
			if t.Labels["job"] == job {
				have = append(have, t.Address)
			}
		}
		if !equalSorted(have, want) {
			return fmt.Errorf("job %s has %v, want %v", job, sorted(have), sorted(want))
		}
		return nil
	}
}

// Scenario 6: the whole etcd cluster is down for 3 x TTL. The file does
// not change during the outage (sdwriter keeps the last good state); once
// etcd is back it holds exactly the live workers: the one killed during the
// outage is gone, the survivors keep their instances, and a worker started
// during the outage has registered.
func TestEtcdClusterDown(t *testing.T) {
	e := newEnv(t)
	const ttl = 3 * time.Second
	var ws []*worker
	for range 4 {
		ws = append(ws, e.startWorker(workerOpts{job: "outage", host: "h", ttl: ttl, rate: 5}))
	}
	e.waitFileAddrs("outage", addrs(ws...), 15*time.Second)
	e.waitActiveUp("outage", addrs(ws...), 30*time.Second)
	before, err := e.fileTargets("outage")
	if err != nil {
		t.Fatal(err)
	}
	_, raw, err := readTargets(e.targets)
	if err != nil {
		t.Fatal(err)
	}

	watch := e.watchFile(5*time.Millisecond, func(_ []target, b []byte, err error) error {
		if err != nil {
			return err
		}
		if string(b) != string(raw) {
			return fmt.Errorf("file changed during the outage: %s", b)
		}
		return nil
	})
	down := time.Now()
	for _, m := range e.cluster.members {
		m.p.kill()
	}
	t.Log("all 3 etcd members killed")
	dead := ws[0]
	dead.kill()
	late := e.startWorker(workerOpts{job: "outage", host: "h", ttl: ttl, rate: 5})
	time.Sleep(3 * ttl) // the outage
	// ...and on until sdwriter reports it (it probes every 5s, with a 5s
	// timeout), the input of the WorkersdEtcdUnreachable alert.
	noticed := eventually(t, 15*time.Second, "workersd_sdwriter_etcd_reachable = 0 during the outage", func() (bool, string) {
		mfs, err := e.sdwriterMetrics()
		if err != nil {
			return false, err.Error()
		}
		v, ok := metricSum(mfs, "workersd_sdwriter_etcd_reachable")
		return ok && v == 0, fmt.Sprint(v)
	})
	watch.Stop()
	if watch.failures > 0 {
		t.Errorf("%d of %d reads during the outage: %v", watch.failures, watch.reads, watch.problems)
	}
	t.Logf("targets file unchanged over %d reads during the %s outage; etcd_reachable 0 after %s",
		watch.reads, time.Since(down).Round(time.Millisecond), (3*ttl + noticed).Round(time.Millisecond))

	restart := time.Now()
	e.cluster.start(0, 1, 2)
	t.Logf("etcd cluster serving again %s after the restart", time.Since(restart).Round(time.Millisecond))
	live := []*worker{ws[1], ws[2], ws[3], late}
	e.waitFileAddrs("outage", addrs(live...), ttl+20*time.Second)
	t.Logf("etcd restarted to the file holding exactly the live workers: %s (TTL %s)", time.Since(restart).Round(time.Millisecond), ttl)
	after, err := e.fileTargets("outage")
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range ws[1:] {
		if b, a := before[w.addr].Labels["instance"], after[w.addr].Labels["instance"]; a != b {
			t.Errorf("worker %s was %s before the outage, %s after", w.addr, b, a)
		}
	}
	e.waitActiveUp("outage", addrs(live...), 30*time.Second)
	if mfs, err := e.sdwriterMetrics(); err != nil {
		t.Error(err)
	} else if v, _ := metricSum(mfs, "workersd_sdwriter_etcd_reachable"); v != 1 {
		t.Errorf("workersd_sdwriter_etcd_reachable = %v after etcd is back, want 1", v)
	}
}

// Scenario 7: sdwriter killed with SIGKILL and restarted, three times,
// while workers come and go. The file is valid at every read, and within
// 1 s of each restart it holds exactly the registered workers.
func TestSdwriterKilled(t *testing.T) {
	e := newEnv(t)
	var live []*worker
	for range 4 {
		live = append(live, e.startWorker(workerOpts{job: "sdkill", host: "h", rate: 5}))
	}
	e.waitFileAddrs("sdkill", addrs(live...), 15*time.Second)
	e.waitActiveUp("sdkill", addrs(live...), 30*time.Second)
	ctx := context.Background()
	cli := e.cluster.client()

	// Valid at every read, and never fewer than the 4 workers that are
	// always live: a restarted sdwriter must not write a partial list.
	watch := e.watchFile(time.Millisecond, func(ts []target, _ []byte, err error) error {
		if err != nil {
			return err
		}
		n := 0
		for _, tg := range ts {
			if tg.Labels["job"] == "sdkill" {
				n++
			}
		}
		if n < 4 {
			return fmt.Errorf("%d sdkill targets in the file, want at least 4", n)
		}
		return nil
	})
	var converged []time.Duration
	for cycle := range 3 {
		e.sdw.kill()
		// While sdwriter is down: one worker stops (its final scrape
		// still happens: Prometheus keeps the file it has), one starts.
		if err := live[0].terminate(45 * time.Second); err != nil {
			t.Fatal(err)
		}
		live = append(live[1:], e.startWorker(workerOpts{job: "sdkill", host: "h", rate: 5}))
		eventually(t, 15*time.Second, "etcd holding exactly the live workers", func() (bool, string) {
			regs, err := registrations(ctx, cli, "sdkill")
			if err != nil {
				return false, err.Error()
			}
			return equalSorted(sortedKeys(regs), addrs(live...)), fmt.Sprint(sortedKeys(regs))
		})
		start := time.Now()
		e.startSdwriter()
		e.waitFileAddrs("sdkill", addrs(live...), 10*time.Second)
		d := time.Since(start)
		converged = append(converged, d)
		if d > time.Second {
			t.Errorf("cycle %d: the file held the registered workers %s after sdwriter was started again, want within 1s", cycle, d.Round(time.Millisecond))
		}
	}
	watch.Stop()
	t.Logf("sdwriter restart to the file converged: %v", roundAll(converged))
	t.Logf("targets file read %d times across 3 kills, every read valid: %v", watch.reads, watch.failures == 0)
	if watch.failures > 0 {
		t.Errorf("%d of %d reads of the targets file failed; first: %v", watch.failures, watch.reads, watch.problems)
	}
	e.waitSdwriterReady(10 * time.Second)
	e.waitActiveUp("sdkill", addrs(live...), 30*time.Second)
}

// Scenario 8: garbage written under the prefix with the etcd client.
// Prometheus keeps scraping every valid worker (and one that starts after
// the garbage), no garbage becomes a target, and sdwriter's invalid
// registration metrics count the entries.
func TestGarbageRegistrations(t *testing.T) {
	e := newEnv(t)
	var ws []*worker
	for range 3 {
		ws = append(ws, e.startWorker(workerOpts{job: "garbage", host: "h", rate: 5}))
	}
	e.waitFileAddrs("garbage", addrs(ws...), 15*time.Second)
	e.waitActiveUp("garbage", addrs(ws...), 30*time.Second)
	ctx := context.Background()
	cli := e.cluster.client()

	const bogus = "127.0.0.1:9"
	garbage := map[string]string{
		prefix + "garbage/h/7":        "not json",
		prefix + "garbage/h/8":        `{"address":"127.0.0.1"}`,
		prefix + "garbage/h/9":        `{"address":"` + bogus + `","labels":{"instance":"stolen"}}`,
		prefix + "garbage/h/11":       `{"address":"` + bogus + `","unknown":1}`,
		prefix + "garbage/h/010":      `{"address":"` + bogus + `"}`,
		prefix + "garbage/other-host": `{"address":"` + bogus + `"}`,
		prefix + "bad job/h/0":        `{"address":"` + bogus + `"}`,
	}
	mfs, err := e.sdwriterMetrics()
	if err != nil {
		t.Fatal(err)
	}
	skipped0, _ := metricSum(mfs, "workersd_sdwriter_invalid_registrations_skipped_total")
	for k, v := range garbage {
		if _, err := cli.Put(ctx, k, v); err != nil {
			t.Fatal(err)
		}
	}
	n := float64(len(garbage))
	eventually(t, 10*time.Second, "sdwriter counting the garbage", func() (bool, string) {
		mfs, err := e.sdwriterMetrics()
		if err != nil {
			return false, err.Error()
		}
		now, _ := metricSum(mfs, "workersd_sdwriter_invalid_registrations")
		skipped, _ := metricSum(mfs, "workersd_sdwriter_invalid_registrations_skipped_total")
		return now == n && skipped-skipped0 == n, fmt.Sprintf("invalid_registrations %v, skipped_total +%v, want %v", now, skipped-skipped0, n)
	})

	late := e.startWorker(workerOpts{job: "garbage", host: "h", rate: 5})
	all := append(addrs(ws...), late.addr)
	e.waitFileAddrs("garbage", all, 15*time.Second)
	ts, _, err := readTargets(e.targets)
	if err != nil {
		t.Fatal(err)
	}
	for _, tg := range ts {
		if tg.Address == bogus || tg.Labels["instance"] == "stolen" || tg.Labels["job"] != "garbage" {
			t.Errorf("garbage became a target: %+v", tg)
		}
	}
	e.waitActiveUp("garbage", all, 30*time.Second)
	e.waitScalar(`count(up{job="garbage"} == 1)`, 4, 20*time.Second)
	// As the WorkersdInvalidRegistrations alert sees it.
	e.waitScalar(`sum(workersd_sdwriter_invalid_registrations)`, n, 20*time.Second)

	for k := range garbage {
		if _, err := cli.Delete(ctx, k); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, 10*time.Second, "the invalid gauge back at 0", func() (bool, string) {
		mfs, err := e.sdwriterMetrics()
		if err != nil {
			return false, err.Error()
		}
		v, _ := metricSum(mfs, "workersd_sdwriter_invalid_registrations")
		return v == 0, fmt.Sprint(v)
	})
	e.waitFileAddrs("garbage", all, time.Second)
}
