//go:build linux

package main

import (
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/workersd/workersd/internal/procgroup"
	"github.com/workersd/workersd/internal/testing/promtest"
)

type kindStats struct {
	injected, skipped, failed int
	longest                   time.Duration
}

// truth is what the workers did, as the run knows it independently of
// workersd and Prometheus.
type truth struct {
	goUnits, goStarts float64
	// lifetimes whose count may not have reached Prometheus: a graceful
	// stop without its final scrape.
	unconfirmed []string
}

type soak struct {
	o         options
	t         topo
	logs      string
	gunicorn  string
	blk       *blocker
	slowQdisc string
	mon       *monitor

	members []*member
	initial string
	cli     *clientv3.Client
	sdw     *proc
	outDir  string
	targets string
	mounted bool
	promURL string
	hosts   []*host

	phaseStart time.Time
	promStart  time.Time
	ending     chan struct{}
	demoWG     sync.WaitGroup

	mu          sync.Mutex
	work        *rand.Rand // the workload's choices (units, idle times)
	seq         int
	procs       []*proc
	incarnation map[string]int
	demos       map[int]*demo
	truth       truth
	stats       map[string]*kindStats
	counts      map[string]int
	events      []string
	problems    []string
	res         map[string][]resSample
	dbMax       map[string]int64
	cleanOnce   sync.Once
}

func (s *soak) count(what string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.counts[what]++
}

func (s *soak) problem(format string, args ...any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.problems = append(s.problems, fmt.Sprintf(format, args...))
}

// inner is the run, inside the core namespace. It returns the exit code.
func inner(o options) int {
	s := &soak{o: o, t: topology(o.runID), logs: filepath.Join(o.workDir, "logs"), blk: newBlocker(),
		ending: make(chan struct{}), work: rand.New(rand.NewPCG(uint64(o.seed), 0x303)),
		incarnation: map[string]int{}, demos: map[int]*demo{}, stats: map[string]*kindStats{},
		counts: map[string]int{}, res: map[string][]resSample{}, dbMax: map[string]int64{}}
	s.mon = newMonitor(s)
	defer s.cleanup()
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-sigs
		s.cleanup()
		os.Exit(1)
	}()
	if err := os.MkdirAll(s.logs, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, "soak:", err)
		return 2
	}
	plan := schedule(o.seed, o.duration)
	fmt.Printf("soak: %d faults planned over %s (seed %d):\n", len(plan), o.duration, o.seed)
	for _, f := range plan {
		fmt.Println("  " + f.String())
	}
	if err := s.up(); err != nil {
		fmt.Fprintln(os.Stderr, "soak: starting the stack:", err)
		return 2
	}
	s.phase(plan)
	return s.finish()
}

// up starts the whole stack and waits until every worker is a target
// scraped by Prometheus.
func (s *soak) up() error {
	start := time.Now()
	g, err := exec.LookPath("gunicorn")
	if err != nil {
		return err
	}
	s.gunicorn = g
	// netem is the tool for a delay; kernels built without it
	// (CONFIG_NET_SCH_NETEM unset) get a token bucket at a low rate, which
	// delays by queueing instead.
	s.slowQdisc = "netem delay 200ms 50ms"
	if err := run("tc", "qdisc", "add", "dev", hostLink(0), "root", "netem", "delay", "1ms"); err != nil {
		s.slowQdisc = "tbf rate 128kbit burst 1600 latency 500ms"
		fmt.Printf("soak: this kernel has no netem qdisc; slowing links with %q instead\n", s.slowQdisc)
	} else {
		run("tc", "qdisc", "del", "dev", hostLink(0), "root")
	}
	if err := s.mountOutput(); err != nil {
		return err
	}
	if err := s.startEtcd(); err != nil {
		return err
	}
	if err := s.startSdwriter(); err != nil {
		return err
	}
	s.promStart = time.Now()
	if err := s.startPrometheus(); err != nil {
		return err
	}
	s.hosts = []*host{s.newHost(0, s.t.a), s.newHost(1, s.t.b)}
	for _, h := range s.hosts {
		if err := s.startAgent(h); err != nil {
			return err
		}
		if err := s.startGunicorn(h); err != nil {
			return err
		}
		h.traffic = newTraffic(fmt.Sprintf("%s:%d", hostIP(h.i), gunicornPort), requestEvery[h.i], uint64(s.o.seed)+uint64(h.i))
	}
	for range demoWorkers {
		if _, err := s.startDemo(); err != nil {
			return err
		}
	}
	want := demoWorkers
	for _, n := range gunicornWorkers {
		want += n
	}
	s.phaseStart = time.Now() // until the phase begins: times since start-up
	go s.mon.run()
	deadline := time.Now().Add(90 * time.Second)
	for {
		n, err := s.promValue(`count(up{job=~"soak.*"} == 1)`)
		if err == nil && int(n) >= want && len(s.fileSnapshot()) >= want {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d workers not all targets scraped by Prometheus within 90s (%v, %v)", want, n, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	for _, h := range s.hosts {
		go h.traffic.run()
	}
	// Baseline of the processes' resources, with the work running.
	for range 3 {
		time.Sleep(4 * time.Second)
		s.sampleResources()
	}
	fmt.Printf("soak: stack up in %s: 3 etcd members, sdwriter, Prometheus, agents on soak-a and soak-b, %d workers\n", time.Since(start).Round(time.Second), want)
	return nil
}

// phase runs the fault schedule and the periodic samples, then waits until
// the stack has settled.
func (s *soak) phase(plan []fault) {
	s.mu.Lock()
	s.phaseStart = time.Now()
	s.mu.Unlock()
	fmt.Printf("soak: fault phase of %s begins\n", s.o.duration)
	stopSampling := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		tick := time.NewTicker(5 * time.Second)
		defer tick.Stop()
		for {
			select {
			case <-stopSampling:
				return
			case <-tick.C:
				s.sampleResources()
			}
		}
	}()
	var wg sync.WaitGroup
	for _, f := range plan {
		wg.Go(func() {
			time.Sleep(time.Until(s.phaseStart.Add(f.At)))
			s.inject(f)
		})
	}
	progress := time.NewTicker(30 * time.Second)
	defer progress.Stop()
	allDone := make(chan struct{})
	go func() { wg.Wait(); close(allDone) }()
	phaseEnd := time.After(s.o.duration)
	for ended, done := false, false; !ended || !done; {
		select {
		case <-progress.C:
			s.mon.mu.Lock()
			v := 0
			for _, n := range s.mon.violations {
				v += n
			}
			s.mon.mu.Unlock()
			fmt.Printf("soak: +%s, %d violations so far\n", time.Since(s.phaseStart).Round(time.Second), v)
		case <-phaseEnd:
			ended = true
		case <-allDone:
			done = true
			allDone = nil
		}
	}
	// Settled: no fault for a bound and more, so every timing condition
	// has had its chance to resolve before the end.
	deadline := time.Now().Add(60 * time.Second)
	for !s.blk.settled(bound+5*time.Second) && time.Now().Before(deadline) {
		time.Sleep(200 * time.Millisecond)
	}
	s.sampleResources()
	time.Sleep(5 * time.Second)
	close(stopSampling)
	<-sampled
	s.sampleResources()
}

// finish stops the work gracefully, checks the totals and every other
// invariant, prints the report and returns the exit code.
func (s *soak) finish() int {
	close(s.ending)
	for _, h := range s.hosts {
		h.traffic.stop()
	}
	s.mu.Lock()
	var ds []*demo
	for _, d := range s.demos {
		ds = append(ds, d)
	}
	s.mu.Unlock()
	for _, d := range ds {
		if d.claim() {
			d.p.signal(syscall.SIGTERM)
		}
	}
	for _, h := range s.hosts {
		h.gunicorn.signal(syscall.SIGTERM)
	}
	stopDeadline := time.After(150 * time.Second)
	for _, d := range ds {
		select {
		case <-d.p.done:
		case <-stopDeadline:
			s.problem("Go worker %d did not stop within 150s of SIGTERM", d.p.pid())
		}
	}
	for _, h := range s.hosts {
		select {
		case <-h.gunicorn.done:
		case <-stopDeadline:
			s.problem("gunicorn of %s did not stop within 150s of SIGTERM", h.name)
		}
	}
	// Every worker is gone: the output must empty within the bound.
	emptied := time.Now()
	for len(s.fileSnapshot()) > 0 && time.Since(emptied) < bound+3*time.Second {
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(500 * time.Millisecond)
	s.mon.halt()
	if n := len(s.fileSnapshot()); n > 0 {
		s.problem("%d targets left in the output %s after every worker stopped", n, time.Since(emptied).Round(time.Millisecond))
	}
	time.Sleep(2 * scrapeInterval)
	end := time.Now()

	var py struct{ ok, nf, refused, ambig int }
	var ambigFirst []string
	for _, h := range s.hosts {
		ok, nf, ref, amb, first := h.traffic.counts()
		py.ok, py.nf, py.refused, py.ambig = py.ok+ok, py.nf+nf, py.refused+ref, py.ambig+amb
		ambigFirst = append(ambigFirst, first...)
	}
	var unconfirmed []string
	s.mu.Lock()
	unconfirmed = append(unconfirmed, s.truth.unconfirmed...)
	goUnits, goStarts := s.truth.goUnits, s.truth.goStarts
	s.mu.Unlock()
	booted, unregistered, noFinal := 0, 0, 0
	for _, h := range s.hosts {
		b, u, n := gunicornLog(h.gunicorn.log())
		booted, unregistered, noFinal = booted+b, unregistered+u, noFinal+n
	}
	if noFinal > 0 {
		unconfirmed = append(unconfirmed, fmt.Sprintf("%d gunicorn workers logged no final scrape", noFinal))
	}
	if unregistered > 0 {
		unconfirmed = append(unconfirmed, fmt.Sprintf("%d gunicorn workers exited unregistered", unregistered))
	}

	type figure struct {
		sel        string
		truth, raw float64
		inc        float64
		err        error
	}
	figs := []figure{
		{sel: fmt.Sprintf(`app_requests_total{job=%q}`, pyJob), truth: float64(py.ok + py.nf)},
		{sel: fmt.Sprintf(`app_responses_total{job=%q,code="404"}`, pyJob), truth: float64(py.nf)},
		{sel: fmt.Sprintf(`demo_jobs_processed_total{job=%q}`, goJob), truth: goUnits},
		{sel: fmt.Sprintf(`demo_worker_starts_total{job=%q}`, goJob), truth: goStarts},
	}
	from := s.promStart.Add(-5 * time.Second)
	for i := range figs {
		figs[i].raw, figs[i].inc, figs[i].err = promtest.Totals(s.promURL, figs[i].sel, from, end)
	}

	// ---- the report ----
	fail := false
	fmt.Printf("\nsoak: report (seed %d, fault phase %s, run %s)\n", s.o.seed, s.o.duration, time.Since(s.phaseStart).Round(time.Second))
	fmt.Println("\nFaults by kind (injected / skipped / failed; longest from start to healed):")
	for _, k := range kinds {
		st := s.stats[k]
		if st == nil {
			st = &kindStats{}
		}
		fmt.Printf("  %-31s %3d / %d / %d  %s\n", k, st.injected, st.skipped, st.failed, st.longest.Round(100*time.Millisecond))
		if st.failed > 0 {
			fail = true
		}
	}
	keys := make([]string, 0, len(s.counts))
	for k := range s.counts {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Printf("  workload: %s: %d\n", k, s.counts[k])
	}
	fmt.Printf("  workload: gunicorn worker lifetimes: %d; Go worker lifetimes: %.0f; requests answered: %d (%d 404), refused before a connection: %d\n",
		booted, goStarts, py.ok+py.nf, py.nf, py.refused)
	fmt.Println("\nTimeline:")
	sort.Strings(s.events)
	for _, e := range s.events {
		fmt.Println("  " + e)
	}

	m := s.mon
	fmt.Printf("\nInvariants (the output read %d times):\n", m.reads)
	resLines, resViol := s.checkResources()
	var dbWorst int64
	var dbLine []string
	for name, size := range s.dbMax {
		dbLine = append(dbLine, fmt.Sprintf("%s %.2f MiB", name, float64(size)/(1<<20)))
		dbWorst = max(dbWorst, size)
	}
	sort.Strings(dbLine)
	totalsOK := true
	for _, f := range figs {
		if f.err != nil || f.raw != f.truth {
			totalsOK = false
		}
	}
	for _, inv := range invariants {
		n := m.violations[inv]
		switch inv {
		case invTotals:
			if !totalsOK || len(unconfirmed) > 0 || py.ambig > 0 {
				n++
			}
		case invEtcd:
			if dbWorst >= etcdBound || len(dbLine) == 0 {
				n++
			}
		case invLeak:
			n += len(resViol)
		}
		mark := "ok  "
		if n > 0 {
			mark = "FAIL"
			fail = true
		}
		detail := ""
		switch inv {
		case invLive:
			detail = fmt.Sprintf(" (checked %d times; longest to a target %s over %d)", m.checks[inv], m.maxToTarget.Round(time.Millisecond), m.toTarget)
		case invDead:
			detail = fmt.Sprintf(" (checked %d times; longest to removal %s over %d)", m.checks[inv], m.maxToRemoval.Round(time.Millisecond), m.toRemoval)
		case invEtcd:
			detail = fmt.Sprintf(" (bound %d MiB; largest: %s)", etcdBound>>20, strings.Join(dbLine, ", "))
		case invParses, invDupWorker, invDupAddr, invDupInst:
			detail = fmt.Sprintf(" (checked %d times)", m.checks[inv])
		}
		fmt.Printf("  %s %s: %d violations%s\n", mark, inv, n, detail)
	}
	for _, v := range m.first {
		fmt.Println("    " + v)
	}
	fmt.Println("\nTotals (reset-aware, from Prometheus' raw samples) against the truth:")
	for _, f := range figs {
		mark := "exact"
		if f.err != nil {
			mark = "ERROR " + f.err.Error()
		} else if f.raw != f.truth {
			mark = fmt.Sprintf("OFF BY %+.0f", f.raw-f.truth)
		}
		fmt.Printf("  %-46s truth %7.0f  raw %7.0f  %s  (sum(increase) %.1f)\n", f.sel, f.truth, f.raw, mark, f.inc)
	}
	for _, f := range figs {
		if f.err == nil && f.raw != f.truth {
			s.logSeries(f.sel, from, end)
		}
	}
	if py.ambig > 0 {
		fmt.Printf("  %d requests failed after their connection was made (their truth is unknown): %v\n", py.ambig, ambigFirst)
	}
	for _, u := range unconfirmed {
		fmt.Println("  unconfirmed: " + u)
	}
	for _, mv := range m.moves {
		fmt.Println("  a live worker moved to another instance (its count in two series; docs/SOAK.md, Found): " + mv)
	}
	fmt.Println("\nResources (settled samples: no fault active or ended within 10 s):")
	for _, l := range resLines {
		fmt.Println("  " + l)
	}
	for _, v := range resViol {
		fmt.Println("  FAIL " + v)
	}
	if len(s.problems) > 0 {
		fail = true
		fmt.Println("\nProblems of the run itself:")
		for _, p := range s.problems {
			fmt.Println("  " + p)
		}
	}
	if fail {
		fmt.Printf("\nsoak: FAIL (seed %d; replay: scripts/soak --seed %d --duration %s)\n", s.o.seed, s.o.seed, s.o.duration)
		return 1
	}
	fmt.Printf("\nsoak: PASS (seed %d)\n", s.o.seed)
	return 0
}

// logSeries prints every series of sel, compressed to its changes
// (value@seconds into the fault phase), to show where a count was lost or
// counted twice.
func (s *soak) logSeries(sel string, start, end time.Time) {
	ss, err := promtest.RawSamples(s.promURL, sel, start, end)
	if err != nil {
		fmt.Println("  ", err)
		return
	}
	fmt.Printf("  series of %s (value@seconds into the fault phase):\n", sel)
	base := float64(s.phaseStart.UnixNano()) / 1e9
	for _, x := range ss {
		var b strings.Builder
		prev, n := -1.0, 0
		for _, p := range x.Samples {
			if p.V != prev {
				if n++; n <= 40 {
					fmt.Fprintf(&b, " %g@%.1f", p.V, p.T-base)
				}
				prev = p.V
			}
		}
		if n > 40 {
			fmt.Fprintf(&b, " ... (%d changes)", n)
		}
		fmt.Printf("    %s:%s\n", x.Metric["instance"], b.String())
	}
}

var (
	bootedRe     = regexp.MustCompile(`Booting worker with pid: (\d+)`)
	registeredRe = regexp.MustCompile(`workersd: registered pid (\d+)`)
)

// gunicornLog counts, in a gunicorn log, the workers booted, those that
// never logged their registration, and those that logged no final scrape.
func gunicornLog(log string) (booted, unregistered, noFinal int) {
	reg := map[string]bool{}
	for _, m := range registeredRe.FindAllStringSubmatch(log, -1) {
		reg[m[1]] = true
	}
	for _, m := range bootedRe.FindAllStringSubmatch(log, -1) {
		booted++
		if !reg[m[1]] {
			unregistered++
		}
	}
	return booted, unregistered, strings.Count(log, "no final scrape of pid")
}

// cleanup stops every process the run started, unmounts the output's
// tmpfs and removes the qdiscs; the outer process deletes the namespaces.
func (s *soak) cleanup() {
	s.cleanOnce.Do(func() {
		s.mu.Lock()
		procs := append([]*proc(nil), s.procs...)
		s.mu.Unlock()
		for _, p := range procs {
			if !p.exited() {
				procgroup.Kill(p.cmd.Process)
			}
		}
		for _, p := range procs {
			select {
			case <-p.done:
			case <-time.After(5 * time.Second):
			}
		}
		if s.cli != nil {
			s.cli.Close()
		}
		for i := range 2 {
			exec.Command("tc", "qdisc", "del", "dev", hostLink(i), "root").Run()
		}
		if s.mounted {
			if err := run("umount", s.outDir); err != nil {
				run("umount", "-l", s.outDir)
			}
		}
	})
}
