//go:build linux

package main

import (
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/workersd/workersd/registrar"
)

// bound is the timing invariants' bound: a dead worker leaves the output,
// and a live one is in it, within TTL + 2 s of its death or start, or of
// the end of a fault that concerns it, whichever is later.
const bound = ttl + 2*time.Second

// The invariants, as the report names them.
const (
	invParses    = "the output always parses"
	invDead      = "no dead worker in the output longer than TTL + 2 s"
	invDupWorker = "never two targets for one worker"
	invDupAddr   = "never two targets for one address"
	invDupInst   = "never two targets for one instance of a job"
	invLive      = "every live worker a target within TTL + 2 s"
	invTotals    = "Prometheus' reset-aware totals equal the truth"
	invEtcd      = "etcd's database under the bound"
	invLeak      = "goroutines and descriptors do not grow"
)

var invariants = []string{invParses, invDead, invDupWorker, invDupAddr, invDupInst, invLive, invTotals, invEtcd, invLeak}

// ftarget is one target of the output.
type ftarget struct {
	job, addr, instance string
	pid                 int
	host                int
	// proc is the process' own metrics path, <pid>-<random>: unlike the
	// pid, which the kernel reuses (pid_max is often 32768, and the machine
	// runs other tests), one process' for good.
	proc string
}

// wrec is what the monitor knows of one worker process.
type wrec struct {
	pid            int
	host           int
	born, died     time.Time
	absentSince    time.Time // alive and not in the output since
	reportedAbsent bool
	reportedDead   bool
	removalSeen    bool
}

// monitor reads the output every 100 ms and checks it against the worker
// processes that exist.
type monitor struct {
	s    *soak
	stop chan struct{}
	done chan struct{}

	mu         sync.Mutex
	file       map[int]ftarget
	workers    map[int]*wrec
	reads      int
	checks     map[string]int // checks made, by invariant
	violations map[string]int
	first      []string
	// Longest times measured from a condition's start (or the end of the
	// faults that concern it) to its resolution.
	maxToTarget, maxToRemoval time.Duration
	toTarget, toRemoval       int
	// instance of each worker process (by ftarget.proc), and the moves of
	// live workers to another instance (each puts a worker's count in a
	// second series)
	instance map[string]string
	moves    []string
}

func newMonitor(s *soak) *monitor {
	return &monitor{s: s, stop: make(chan struct{}), done: make(chan struct{}),
		workers: map[int]*wrec{}, instance: map[string]string{}, checks: map[string]int{}, violations: map[string]int{}}
}

func (m *monitor) violate(inv, format string, args ...any) {
	m.violations[inv]++
	line := fmt.Sprintf("+%.1fs %s: %s", time.Since(m.s.phaseStart).Seconds(), inv, fmt.Sprintf(format, args...))
	if m.violations[inv] <= 5 {
		m.first = append(m.first, line)
		fmt.Println("soak: VIOLATION " + line)
	}
}

func (m *monitor) run() {
	defer close(m.done)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-m.stop:
			return
		case <-tick.C:
		}
		m.check()
	}
}

func (m *monitor) halt() {
	close(m.stop)
	<-m.done
}

func hostIndex(name string) int {
	if r, ok := strings.CutPrefix(name, "soak-"); ok && len(r) == 1 {
		return int(r[0] - 'a')
	}
	return -1
}

// parseOutput reads sdwriter's file_sd file strictly.
func parseOutput(b []byte) ([]ftarget, error) {
	var groups []struct {
		Targets []string          `json:"targets"`
		Labels  map[string]string `json:"labels"`
	}
	if err := json.Unmarshal(b, &groups); err != nil {
		return nil, err
	}
	var out []ftarget
	for _, g := range groups {
		if len(g.Targets) == 0 {
			return nil, fmt.Errorf("a group without targets")
		}
		path := g.Labels["__metrics_path__"]
		rest, ok := strings.CutPrefix(path, registrar.DefaultMetricsPath+"/")
		pidS, _, _ := strings.Cut(rest, "-")
		pid, err := strconv.Atoi(pidS)
		if !ok || err != nil {
			return nil, fmt.Errorf("target %v: metrics path %q names no process", g.Targets, path)
		}
		for _, a := range g.Targets {
			out = append(out, ftarget{job: g.Labels["job"], addr: a, instance: g.Labels["instance"], pid: pid, host: hostIndex(g.Labels["host"]), proc: rest})
		}
	}
	return out, nil
}

func (m *monitor) check() {
	s := m.s
	now := time.Now()
	live := s.gunicornChildren()
	s.mu.Lock()
	for pid, d := range s.demos {
		if !d.p.exited() && alive(pid) {
			live[pid] = 1
		}
	}
	s.mu.Unlock()

	b, err := os.ReadFile(s.targets)
	if ts, perr := parseOutput(b); err == nil && perr == nil {
		// A Go worker registers before the run reads its address and
		// counts it among its workers: a process that is running is alive.
		for _, t := range ts {
			if _, ok := live[t.pid]; !ok && alive(t.pid) {
				live[t.pid] = t.host
			}
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.reads++
	m.checks[invParses]++
	if err != nil {
		m.violate(invParses, "read: %v", err)
		return
	}
	ts, err := parseOutput(b)
	if err != nil {
		m.violate(invParses, "%v: %q", err, b)
		return
	}
	file := map[int]ftarget{}
	addrs, insts := map[string]int{}, map[string]int{}
	m.checks[invDupWorker]++
	m.checks[invDupAddr]++
	m.checks[invDupInst]++
	for _, t := range ts {
		if o, ok := file[t.pid]; ok {
			m.violate(invDupWorker, "pid %d as %s (%s) and %s (%s)", t.pid, o.instance, o.addr, t.instance, t.addr)
		}
		if p, ok := addrs[t.addr]; ok {
			m.violate(invDupAddr, "%s for pids %d and %d", t.addr, p, t.pid)
		}
		if p, ok := insts[t.job+" "+t.instance]; ok {
			m.violate(invDupInst, "job %s instance %s for pids %d and %d", t.job, t.instance, p, t.pid)
		}
		file[t.pid], addrs[t.addr], insts[t.job+" "+t.instance] = t, t.pid, t.pid
	}
	m.file = file
	for pid, t := range file {
		key := t.job + " " + t.instance
		if old, ok := m.instance[t.proc]; ok && old != key && len(m.moves) < 20 {
			m.moves = append(m.moves, fmt.Sprintf("+%.1fs worker %d from %s to %s", time.Since(s.phaseStart).Seconds(), pid, old, key))
		}
		m.instance[t.proc] = key
	}

	for pid, h := range live {
		if _, ok := m.workers[pid]; !ok {
			m.workers[pid] = &wrec{pid: pid, host: h, born: now}
		}
	}
	for pid, t := range file {
		if _, ok := m.workers[pid]; !ok {
			// In the output, never seen alive: it lived between two reads.
			m.workers[pid] = &wrec{pid: pid, host: t.host, born: now, died: now}
		}
	}
	m.checks[invLive]++
	m.checks[invDead]++
	for pid, w := range m.workers {
		if h, ok := live[pid]; !ok && w.died.IsZero() {
			w.died = now
		} else if ok && !w.died.IsZero() {
			// A dead worker's pid alive again is another process (the
			// kernel reuses pids): a worker of its own, born now.
			*w = wrec{pid: pid, host: h, born: now}
		}
		_, present := file[pid]
		if w.died.IsZero() {
			if present {
				if !w.absentSince.IsZero() {
					if from, blocked := s.blk.window(w.host, w.absentSince); !blocked {
						if d := now.Sub(from); d > m.maxToTarget {
							m.maxToTarget = d
						}
						m.toTarget++
					}
				}
				w.absentSince, w.reportedAbsent = time.Time{}, false
				continue
			}
			if w.absentSince.IsZero() {
				w.absentSince = now
			}
			if from, blocked := s.blk.window(w.host, w.absentSince); !blocked && now.Sub(from) > bound && !w.reportedAbsent {
				w.reportedAbsent = true
				m.violate(invLive, "worker %d of host %d alive and not in the output since %s (bound from %s)", pid, w.host, stamp(s, w.absentSince), stamp(s, from))
			}
			continue
		}
		from, blocked := s.blk.window(w.host, w.died)
		if present {
			if !blocked && now.Sub(from) > bound && !w.reportedDead {
				w.reportedDead = true
				t := file[pid]
				m.violate(invDead, "worker %d (%s, %s) dead since %s, still in the output (bound from %s)", pid, t.instance, t.addr, stamp(s, w.died), stamp(s, from))
			}
			continue
		}
		if !w.removalSeen {
			w.removalSeen = true
			if !blocked {
				if d := now.Sub(from); d > m.maxToRemoval {
					m.maxToRemoval = d
				}
				m.toRemoval++
			}
		}
		if now.Sub(w.died) > time.Minute {
			delete(m.workers, pid)
		}
	}
}

func stamp(s *soak, t time.Time) string {
	return fmt.Sprintf("+%.1fs", t.Sub(s.phaseStart).Seconds())
}

// fileSnapshot is the output as last read, by pid.
func (s *soak) fileSnapshot() map[int]ftarget {
	s.mon.mu.Lock()
	defer s.mon.mu.Unlock()
	out := make(map[int]ftarget, len(s.mon.file))
	for k, v := range s.mon.file {
		out[k] = v
	}
	return out
}

func (s *soak) inFile(pid int) bool {
	s.mon.mu.Lock()
	defer s.mon.mu.Unlock()
	_, ok := s.mon.file[pid]
	return ok
}

// ---- resources: goroutines, descriptors, etcd's database ----

type resSample struct {
	at          time.Time
	incarnation int
	goroutines  float64
	fds         float64
	settled     bool
}

// sampleResources scrapes sdwriter's and the agents' own metrics and asks
// etcd for its database sizes.
func (s *soak) sampleResources() {
	settled := s.blk.settled(10 * time.Second)
	comps := map[string]string{"sdwriter": "http://" + sdwriterAddr + "/metrics"}
	for _, h := range s.hosts {
		comps["agent-"+h.name] = "http://" + h.web + "/metrics"
	}
	for name, url := range comps {
		s.mu.Lock()
		inc := s.incarnation[name]
		s.mu.Unlock()
		mfs, err := scrape(url)
		if err != nil {
			continue
		}
		g, ok1 := gauge(mfs, "go_goroutines")
		f, ok2 := gauge(mfs, "process_open_fds")
		if !ok1 || !ok2 {
			continue
		}
		s.mu.Lock()
		if s.incarnation[name] == inc { // not restarted meanwhile
			s.res[name] = append(s.res[name], resSample{at: time.Now(), incarnation: inc, goroutines: g, fds: f, settled: settled})
		}
		s.mu.Unlock()
	}
	for name, size := range s.dbSizes() {
		s.mu.Lock()
		if size > s.dbMax[name] {
			s.dbMax[name] = size
		}
		s.mu.Unlock()
	}
}

// Growth allowed between two settled samples of a process (the same number
// of workers, no fault active or ended within 10 s): what a worker's
// recycling in progress and an HTTP connection or two of Prometheus and of
// the harness account for.
const (
	goroutineGrowth = 20
	fdGrowth        = 10
)

// etcdBound is the stated bound of each member's database file.
const etcdBound = 16 << 20

// checkResources compares, per process, its first settled sample with its
// last (each incarnation, and the first incarnation's baseline with the
// final one's last).
func (s *soak) checkResources() (lines []string, violations []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	names := make([]string, 0, len(s.res))
	for n := range s.res {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		var settled []resSample
		for _, x := range s.res[n] {
			if x.settled {
				settled = append(settled, x)
			}
		}
		if len(settled) < 2 {
			violations = append(violations, fmt.Sprintf("%s: %d settled samples, too few to judge", n, len(settled)))
			continue
		}
		base, last := settled[0], settled[len(settled)-1]
		maxG, maxF := 0.0, 0.0
		for _, x := range s.res[n] {
			maxG, maxF = max(maxG, x.goroutines), max(maxF, x.fds)
		}
		lines = append(lines, fmt.Sprintf("%-14s goroutines %3.0f at the start, %3.0f at the end (max %3.0f); open fds %3.0f, %3.0f (max %3.0f); %d incarnations, %d settled samples",
			n, base.goroutines, last.goroutines, maxG, base.fds, last.fds, maxF, s.incarnation[n], len(settled)))
		pairs := [][2]resSample{{base, last}}
		byInc := map[int][]resSample{}
		for _, x := range settled {
			byInc[x.incarnation] = append(byInc[x.incarnation], x)
		}
		for _, xs := range byInc {
			if len(xs) >= 2 {
				pairs = append(pairs, [2]resSample{xs[0], xs[len(xs)-1]})
			}
		}
		for _, p := range pairs {
			if g := p[1].goroutines - p[0].goroutines; g > goroutineGrowth {
				violations = append(violations, fmt.Sprintf("%s: goroutines %v at %s, %v at %s (+%v, allowed +%d)", n, p[0].goroutines, stamp(s, p[0].at), p[1].goroutines, stamp(s, p[1].at), g, goroutineGrowth))
			}
			if f := p[1].fds - p[0].fds; f > fdGrowth {
				violations = append(violations, fmt.Sprintf("%s: open fds %v at %s, %v at %s (+%v, allowed +%d)", n, p[0].fds, stamp(s, p[0].at), p[1].fds, stamp(s, p[1].at), f, fdGrowth))
			}
		}
	}
	return lines, violations
}
