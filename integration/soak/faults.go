//go:build linux

package main

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/workersd/workersd/internal/testing/promtest"
)

// The kinds of fault.
const (
	kWorkerTerm = "worker SIGTERM"
	kWorkerKill = "worker kill -9"
	kAgentKill  = "agent kill -9 + restart"
	kSdwKill    = "sdwriter kill -9 + restart"
	kMemberKill = "etcd member kill -9 + restart"
	kLeaderKill = "etcd leader kill -9 + restart"
	kLinkCut    = "host link cut + healed"
	kLinkSlow   = "host link slowed (etcd slowed)"
	kDiskFull   = "output disk full + freed"
)

var kinds = []string{kWorkerTerm, kWorkerKill, kAgentKill, kSdwKill, kMemberKill, kLeaderKill, kLinkCut, kLinkSlow, kDiskFull}

// fault is one planned fault: when (from the start of the fault phase),
// how long, which kind, which host (for host faults) and a number that
// picks its victim among those present when it comes.
type fault struct {
	At, Dur time.Duration
	Kind    string
	Host    int
	Pick    uint32
}

func (f fault) String() string {
	s := fmt.Sprintf("+%6.1fs %-31s", f.At.Seconds(), f.Kind)
	switch f.Kind {
	case kAgentKill, kLinkCut, kLinkSlow:
		s += fmt.Sprintf(" host soak-%c", 'a'+f.Host)
	}
	if f.Dur > 0 {
		s += fmt.Sprintf(" for %.1fs", f.Dur.Seconds())
	}
	return s
}

// schedule draws the faults of a phase of length d from seed alone: the
// same seed and duration give the same schedule. Faults on one resource
// (the etcd cluster, sdwriter, the output disk, a host's agent, a host's
// link) follow each other; faults on different resources overlap freely.
// Every fault ends by d.
func schedule(seed int64, d time.Duration) []fault {
	rng := rand.New(rand.NewPCG(uint64(seed), 0x50a4))
	var out []fault
	span := func(lo, hi float64) time.Duration {
		return time.Duration((lo + rng.Float64()*(hi-lo)) * float64(time.Second))
	}
	// lane draws the faults of one resource: gaps around mean, durations
	// from dur, kinds from kind.
	lane := func(mean time.Duration, dur func() time.Duration, kind func() (string, int)) {
		t := time.Duration(rng.Float64() * float64(mean))
		for {
			k, h := kind()
			f := fault{At: t, Dur: dur(), Kind: k, Host: h, Pick: rng.Uint32()}
			if f.At+f.Dur > d {
				return
			}
			out = append(out, f)
			t = f.At + f.Dur + time.Duration((0.3+1.4*rng.Float64())*float64(mean))
		}
	}
	fixed := func(k string, h int) func() (string, int) { return func() (string, int) { return k, h } }
	lane(40*time.Second, func() time.Duration { return span(3, 10) }, func() (string, int) {
		if rng.IntN(2) == 0 {
			return kMemberKill, 0
		}
		return kLeaderKill, 0
	})
	lane(50*time.Second, func() time.Duration { return span(1, 8) }, fixed(kSdwKill, 0))
	lane(50*time.Second, func() time.Duration { return span(3, 12) }, fixed(kDiskFull, 0))
	for h := range 2 {
		lane(70*time.Second, func() time.Duration { return span(1, 8) }, fixed(kAgentKill, h))
		lane(45*time.Second, func() time.Duration { return span(2, 12) }, func() (string, int) {
			if rng.IntN(2) == 0 {
				return kLinkCut, h
			}
			return kLinkSlow, h
		})
	}
	lane(15*time.Second, func() time.Duration { return 0 }, fixed(kWorkerTerm, 0))
	lane(20*time.Second, func() time.Duration { return 0 }, fixed(kWorkerKill, 0))
	sort.SliceStable(out, func(i, j int) bool { return out[i].At < out[j].At })
	return out
}

// ---- faults that block the stack, for the timing invariants ----

// blocker records which faults that keep the stack from converging are
// active, per scope (global: -1, or a host), and when the last one of each
// scope ended: a timing bound runs from the later of its condition's start
// and the end of the faults that concern it.
type blocker struct {
	mu      sync.Mutex
	active  map[int]int
	lastEnd map[int]time.Time
	anyEnd  time.Time
}

func newBlocker() *blocker { return &blocker{active: map[int]int{}, lastEnd: map[int]time.Time{}} }

func (b *blocker) begin(scope int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.active[scope]++
}

func (b *blocker) end(scope int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.active[scope]--
	now := time.Now()
	b.lastEnd[scope] = now
	b.anyEnd = now
}

// window returns when the bound for a condition of host that began at
// start runs from, and whether a fault concerning the host is active.
func (b *blocker) window(host int, start time.Time) (from time.Time, blocked bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	from = start
	for _, sc := range []int{-1, host} {
		if b.active[sc] > 0 {
			blocked = true
		}
		if e := b.lastEnd[sc]; e.After(from) {
			from = e
		}
	}
	return from, blocked
}

// settled says no fault is active and none ended within quiet.
func (b *blocker) settled(quiet time.Duration) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, n := range b.active {
		if n > 0 {
			return false
		}
	}
	return time.Since(b.anyEnd) >= quiet
}

// ---- injecting ----

// inject runs one fault, from its start to its healing, and records it.
func (s *soak) inject(f fault) {
	began := time.Now()
	detail, err := s.injectKind(f)
	took := time.Since(began)
	at := began.Sub(s.phaseStart).Seconds()
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.stats[f.Kind]
	if st == nil {
		st = &kindStats{}
		s.stats[f.Kind] = st
	}
	var skip *skipped
	if errors.As(err, &skip) {
		st.skipped++
		s.events = append(s.events, fmt.Sprintf("+%6.1fs %s: skipped: %s", at, f.Kind, skip.why))
		return
	}
	if err != nil {
		st.failed++
		s.problems = append(s.problems, fmt.Sprintf("+%.1fs %s: %v", at, f.Kind, err))
		s.events = append(s.events, fmt.Sprintf("+%6.1fs %s: FAILED: %v", at, f.Kind, err))
		return
	}
	st.injected++
	if took > st.longest {
		st.longest = took
	}
	s.events = append(s.events, fmt.Sprintf("+%6.1fs %s: %s (%.1fs)", at, f.Kind, detail, took.Seconds()))
}

// skipped is a fault that found no victim in the state it requires.
type skipped struct{ why string }

func (e *skipped) Error() string { return e.why }

func (s *soak) injectKind(f fault) (string, error) {
	switch f.Kind {
	case kWorkerTerm:
		return s.workerTerm(f)
	case kWorkerKill:
		return s.workerKill(f)
	case kAgentKill:
		h := s.hosts[f.Host]
		s.blk.begin(h.i)
		defer s.blk.end(h.i)
		h.agent.kill()
		time.Sleep(f.Dur)
		if err := s.startAgent(h); err != nil {
			return "", fmt.Errorf("restart agent of %s: %w", h.name, err)
		}
		return "agent of " + h.name + " killed and restarted", nil
	case kSdwKill:
		s.blk.begin(-1)
		defer s.blk.end(-1)
		s.sdw.kill()
		time.Sleep(f.Dur)
		if err := s.startSdwriter(); err != nil {
			return "", fmt.Errorf("restart sdwriter: %w", err)
		}
		return "sdwriter killed and restarted", nil
	case kMemberKill, kLeaderKill:
		return s.etcdFault(f)
	case kLinkCut:
		h := s.hosts[f.Host]
		s.blk.begin(h.i)
		defer s.blk.end(h.i)
		// Nothing in flight: a request cut midway may or may not have
		// been counted.
		h.traffic.pause()
		defer h.traffic.resume()
		if err := run("ip", "link", "set", hostLink(h.i), "down"); err != nil {
			return "", err
		}
		time.Sleep(f.Dur)
		if err := run("ip", "link", "set", hostLink(h.i), "up"); err != nil {
			return "", err
		}
		return "link of " + h.name + " cut and healed", nil
	case kLinkSlow:
		h := s.hosts[f.Host]
		s.blk.begin(h.i)
		defer s.blk.end(h.i)
		qd := strings.Fields(s.slowQdisc)
		if err := run("tc", append([]string{"qdisc", "add", "dev", hostLink(h.i), "root"}, qd...)...); err != nil {
			return "", err
		}
		if err := run("ip", append([]string{"netns", "exec", h.ns, "tc", "qdisc", "add", "dev", "eth0", "root"}, qd...)...); err != nil {
			run("tc", "qdisc", "del", "dev", hostLink(h.i), "root")
			return "", err
		}
		time.Sleep(f.Dur)
		err1 := run("tc", "qdisc", "del", "dev", hostLink(h.i), "root")
		err2 := run("ip", "netns", "exec", h.ns, "tc", "qdisc", "del", "dev", "eth0", "root")
		if err := errors.Join(err1, err2); err != nil {
			return "", err
		}
		return "link of " + h.name + " slowed both ways (" + s.slowQdisc + ")", nil
	case kDiskFull:
		s.blk.begin(-1)
		defer s.blk.end(-1)
		filler := filepath.Join(s.outDir, "filler")
		n, err := fill(filler)
		defer os.Remove(filler)
		if err != nil {
			return "", err
		}
		time.Sleep(f.Dur)
		if err := os.Remove(filler); err != nil {
			return "", err
		}
		return fmt.Sprintf("output tmpfs filled (%d KiB) and freed", n>>10), nil
	}
	return "", fmt.Errorf("unknown fault %q", f.Kind)
}

// fill writes path until the file system is full.
func fill(path string) (int64, error) {
	f, err := os.Create(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	buf := make([]byte, 16<<10)
	var n int64
	for {
		k, err := f.Write(buf)
		n += int64(k)
		if errors.Is(err, syscall.ENOSPC) {
			return n, nil
		}
		if err != nil {
			return n, err
		}
	}
}

func (s *soak) etcdFault(f fault) (string, error) {
	s.blk.begin(-1)
	defer s.blk.end(-1)
	ctx := context.Background()
	var leader int
	var err error
	deadline := time.Now().Add(10 * time.Second)
	for {
		if leader, err = s.leader(ctx); err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if err != nil {
		return "", fmt.Errorf("no leader agreed on: %w", err)
	}
	victim := leader
	if f.Kind == kMemberKill {
		var followers []int
		for i := range s.members {
			if i != leader {
				followers = append(followers, i)
			}
		}
		victim = followers[int(f.Pick)%len(followers)]
	}
	m := s.members[victim]
	m.p.kill()
	detail := m.name + " killed"
	if f.Kind == kLeaderKill {
		killed := time.Now()
		elected := -1
		for time.Since(killed) < 30*time.Second {
			if l, err := s.leader(ctx); err == nil && l != victim {
				elected = l
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if elected < 0 {
			return "", fmt.Errorf("no new leader within 30s of killing %s", m.name)
		}
		detail = fmt.Sprintf("leader %s killed, %s elected after %s", m.name, s.members[elected].name, time.Since(killed).Round(10*time.Millisecond))
	}
	time.Sleep(f.Dur)
	if err := s.restartMember(victim); err != nil {
		return "", fmt.Errorf("restart %s: %w", m.name, err)
	}
	return detail + ", restarted", nil
}

// workerTerm stops a worker gracefully: a gunicorn worker (its master
// starts another) or a Go worker (the run starts another), among those in
// the targets file.
func (s *soak) workerTerm(f fault) (string, error) {
	type cand struct {
		key  string
		pid  int
		demo *demo
	}
	var cands []cand
	file := s.fileSnapshot()
	for pid := range s.gunicornChildren() {
		if tg, ok := file[pid]; ok {
			cands = append(cands, cand{key: tg.instance, pid: pid})
		}
	}
	s.mu.Lock()
	for pid, d := range s.demos {
		if tg, ok := file[pid]; ok {
			cands = append(cands, cand{key: tg.instance, pid: pid, demo: d})
		}
	}
	s.mu.Unlock()
	if len(cands) == 0 {
		return "", &skipped{"no worker in the targets file"}
	}
	sort.Slice(cands, func(i, j int) bool { return cands[i].key < cands[j].key })
	c := cands[int(f.Pick)%len(cands)]
	if c.demo != nil {
		if !c.demo.claim() {
			return "", &skipped{"the Go worker chosen is stopping already"}
		}
		c.demo.p.signal(syscall.SIGTERM)
		return fmt.Sprintf("Go worker %d (%s)", c.pid, c.key), nil
	}
	if err := syscall.Kill(c.pid, syscall.SIGTERM); err != nil {
		return "", &skipped{fmt.Sprintf("gunicorn worker %d: %v", c.pid, err)}
	}
	return fmt.Sprintf("gunicorn worker %d (%s)", c.pid, c.key), nil
}

// workerKill kills a worker with SIGKILL once everything it counted is in
// Prometheus (the truth of a killed worker is what it exposed at its last
// scrape): a gunicorn worker after its host's traffic is paused and every
// worker of the host was scraped since, or a Go worker that finished its
// units once Prometheus has all of them.
func (s *soak) workerKill(f fault) (string, error) {
	order := []bool{true, false} // gunicorn first
	if f.Pick%2 == 1 {
		order = []bool{false, true}
	}
	var whys []string
	for _, py := range order {
		var detail string
		var err error
		if py {
			detail, err = s.killGunicornWorker(f)
		} else {
			detail, err = s.killDemo(f)
		}
		var skip *skipped
		if errors.As(err, &skip) {
			whys = append(whys, skip.why)
			continue
		}
		return detail, err
	}
	return "", &skipped{strings.Join(whys, "; ")}
}

func (s *soak) killGunicornWorker(f fault) (string, error) {
	h := s.hosts[int(f.Pick/2)%len(s.hosts)]
	h.traffic.pause()
	defer h.traffic.resume()
	quiet := time.Now()
	deadline := quiet.Add(45 * time.Second)
	var last string
	for {
		victim, why := s.scrapedSince(h, quiet, f.Pick)
		if victim != 0 {
			if err := syscall.Kill(victim, syscall.SIGKILL); err != nil {
				return "", &skipped{fmt.Sprintf("gunicorn worker %d: %v", victim, err)}
			}
			return fmt.Sprintf("gunicorn worker %d of %s, %s after its traffic paused", victim, h.name, time.Since(quiet).Round(time.Millisecond)), nil
		}
		last = why
		if time.Now().After(deadline) {
			return "", &skipped{fmt.Sprintf("gunicorn workers of %s not all scraped within 45s of a pause: %s", h.name, last)}
		}
		time.Sleep(300 * time.Millisecond)
	}
}

// scrapedSince returns a victim among h's gunicorn workers once every one
// of them is in the targets file and was scraped successfully after t,
// or 0 and why not.
func (s *soak) scrapedSince(h *host, t time.Time, pick uint32) (int, string) {
	file := s.fileSnapshot()
	var insts []string
	byInst := map[string]int{}
	for pid, hi := range s.gunicornChildren() {
		if hi != h.i {
			continue
		}
		tg, ok := file[pid]
		if !ok {
			return 0, fmt.Sprintf("worker %d not in the targets file", pid)
		}
		insts = append(insts, tg.instance)
		byInst[tg.instance] = pid
	}
	if len(insts) == 0 {
		return 0, "no worker"
	}
	ss, err := promtest.RawSamples(s.promURL, fmt.Sprintf(`up{job=%q}`, pyJob), time.Now().Add(-5*time.Second), time.Now())
	if err != nil {
		return 0, err.Error()
	}
	fresh := map[string]bool{}
	for _, x := range ss {
		if last := x.Samples[len(x.Samples)-1]; last.V == 1 && last.T >= float64(t.UnixNano())/1e9+0.1 {
			fresh[x.Metric["instance"]] = true
		}
	}
	for _, in := range insts {
		if !fresh[in] {
			return 0, "instance " + in + " not scraped since"
		}
	}
	sort.Strings(insts)
	return byInst[insts[int(pick)%len(insts)]], ""
}

func (s *soak) killDemo(f fault) (string, error) {
	deadline := time.Now().Add(45 * time.Second)
	for {
		file := s.fileSnapshot()
		s.mu.Lock()
		var ds []*demo
		for _, d := range s.demos {
			ds = append(ds, d)
		}
		s.mu.Unlock()
		sort.Slice(ds, func(i, j int) bool { return ds[i].addr < ds[j].addr })
		for k := range ds {
			d := ds[(int(f.Pick)+k)%len(ds)]
			tg, ok := file[d.p.pid()]
			if !ok {
				continue
			}
			if v, ok := d.processed(); !ok || v != float64(d.units) {
				continue
			}
			got, err := s.promValue(fmt.Sprintf(`demo_jobs_processed_total{job=%q,instance=%q}`, goJob, tg.instance))
			if err != nil || got != float64(d.units) {
				continue
			}
			d.mu.Lock()
			if d.claimed {
				d.mu.Unlock()
				continue
			}
			d.claimed, d.killed = true, true
			d.mu.Unlock()
			d.p.kill()
			return fmt.Sprintf("Go worker %d (%s) after its %d units were in Prometheus", d.p.pid(), tg.instance, d.units), nil
		}
		if time.Now().After(deadline) {
			return "", &skipped{"no Go worker had all its units in Prometheus within 45s"}
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// promValue is the value of an instant query that gives one sample.
func (s *soak) promValue(q string) (float64, error) {
	var data struct {
		Result []struct {
			Value []any `json:"value"`
		} `json:"result"`
	}
	if err := promtest.API(s.promURL, "/api/v1/query", map[string][]string{"query": {q}}, &data); err != nil {
		return 0, err
	}
	if len(data.Result) != 1 || len(data.Result[0].Value) != 2 {
		return 0, fmt.Errorf("%s: %d samples", q, len(data.Result))
	}
	vs, _ := data.Result[0].Value[1].(string)
	var v float64
	_, err := fmt.Sscanf(vs, "%g", &v)
	return v, err
}
