//go:build linux

package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/workersd/workersd/internal/etcdclient"
	"github.com/workersd/workersd/internal/procgroup"
)

// The stack's settings. TTL and the slot hold are the agent's and the Go
// workers'; the final-scrape timeouts cover the longest fault that keeps
// Prometheus from a worker (a link cut or slowed, 15 s) plus discovery.
const (
	ttl                = 5 * time.Second
	scrapeInterval     = time.Second
	finalScrapeTimeout = 60 * time.Second
	pyJob              = "soakpy"
	goJob              = "soakgo"
	gunicornPort       = 8000
	agentWebPort       = 9101
	sdwriterAddr       = "127.0.0.1:9201"
	promAddr           = "127.0.0.1:9090"
	outputSize         = "512k" // the tmpfs sdwriter writes to
)

// gunicornWorkers and the request pace per host: host a runs 3 workers, host
// b 2 beside the Go workers; max_requests 60 (jitter 12) recycles each
// worker every 25 to 40 s.
var (
	gunicornWorkers = []int{3, 2}
	requestEvery    = []time.Duration{150 * time.Millisecond, 250 * time.Millisecond}
)

const (
	maxRequests = 60
	demoWorkers = 3
)

// proc is a child process in its own process group, its output in a log
// file; Pdeathsig kills it if the run dies without its cleanups.
type proc struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	done    chan struct{}
	started time.Time
}

func (s *soak) start(ns, name string, env []string, dir, bin string, args ...string) (*proc, error) {
	s.mu.Lock()
	s.seq++
	logPath := filepath.Join(s.logs, fmt.Sprintf("%s-%03d.log", name, s.seq))
	s.mu.Unlock()
	f, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var cmd *exec.Cmd
	if ns != "" {
		cmd = exec.Command("ip", append([]string{"netns", "exec", ns, bin}, args...)...)
	} else {
		cmd = exec.Command(bin, args...)
	}
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = procgroup.Attr()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, logPath: logPath, done: make(chan struct{}), started: time.Now()}
	go func() {
		cmd.Wait()
		close(p.done)
	}()
	s.mu.Lock()
	s.procs = append(s.procs, p)
	s.mu.Unlock()
	return p, nil
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func (p *proc) signal(sig syscall.Signal) {
	if !p.exited() {
		syscall.Kill(p.pid(), sig)
	}
}

// kill sends SIGKILL to the process group and waits for the exit.
func (p *proc) kill() {
	if !p.exited() {
		procgroup.Kill(p.cmd.Process)
	}
	<-p.done
}

func (p *proc) log() string {
	b, _ := os.ReadFile(p.logPath)
	return string(b)
}

// waitLine waits for a line of output that starts with prefix and returns
// the rest of it.
func (p *proc) waitLine(prefix string, timeout time.Duration) (string, error) {
	deadline := time.Now().Add(timeout)
	for {
		f, err := os.Open(p.logPath)
		if err == nil {
			sc := bufio.NewScanner(f)
			for sc.Scan() {
				if rest, ok := strings.CutPrefix(sc.Text(), prefix); ok {
					f.Close()
					return strings.TrimSpace(rest), nil
				}
			}
			f.Close()
		}
		if p.exited() {
			return "", fmt.Errorf("%s exited (%v) before printing %q; log %s", p.name, p.cmd.ProcessState, prefix, p.logPath)
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("%s printed no %q within %s; log %s", p.name, prefix, timeout, p.logPath)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

var httpClient = &http.Client{Timeout: 5 * time.Second}

func waitHTTP(url string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		resp, err := httpClient.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = errors.New(resp.Status)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready after %s: %v", url, timeout, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func scrape(url string) (map[string]*dto.MetricFamily, error) {
	resp, err := httpClient.Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	return p.TextToMetricFamilies(resp.Body)
}

func gauge(mfs map[string]*dto.MetricFamily, name string) (float64, bool) {
	mf, ok := mfs[name]
	if !ok || len(mf.GetMetric()) == 0 {
		return 0, false
	}
	m := mf.GetMetric()[0]
	switch {
	case m.Gauge != nil:
		return m.GetGauge().GetValue(), true
	case m.Counter != nil:
		return m.GetCounter().GetValue(), true
	case m.Untyped != nil:
		return m.GetUntyped().GetValue(), true
	}
	return 0, false
}

// ---- etcd ----

type member struct {
	name, dir, client, peer string
	p                       *proc
}

func (s *soak) startEtcd() error {
	var parts []string
	for i := range 3 {
		m := &member{name: fmt.Sprintf("m%d", i), client: fmt.Sprintf("%s:%d", coreIP, 2379+10*i), peer: fmt.Sprintf("%s:%d", coreIP, 2380+10*i)}
		m.dir = filepath.Join(s.o.workDir, "etcd", m.name)
		s.members = append(s.members, m)
		parts = append(parts, m.name+"=http://"+m.peer)
	}
	s.initial = strings.Join(parts, ",")
	for i := range s.members {
		if err := s.launchMember(i); err != nil {
			return err
		}
	}
	for _, m := range s.members {
		if _, err := m.p.waitLine("ready", 60*time.Second); err != nil {
			return err
		}
	}
	cli, err := etcdclient.New(s.endpoints(), clientv3.Config{})
	if err != nil {
		return err
	}
	s.cli = cli
	return nil
}

func (s *soak) launchMember(i int) error {
	m := s.members[i]
	p, err := s.start("", "etcd-"+m.name, nil, "", filepath.Join(s.o.binDir, "etcdmember"),
		"--name="+m.name, "--data-dir="+m.dir, "--client-address="+m.client, "--peer-address="+m.peer,
		"--initial-cluster="+s.initial, "--cluster-token=workersd-soak-"+s.o.runID, "--unsafe-no-fsync")
	if err != nil {
		return err
	}
	m.p = p
	return nil
}

// restartMember starts member i again on its data and waits until it serves.
func (s *soak) restartMember(i int) error {
	if err := s.launchMember(i); err != nil {
		return err
	}
	_, err := s.members[i].p.waitLine("ready", 60*time.Second)
	return err
}

func (s *soak) endpoints() []string {
	var eps []string
	for _, m := range s.members {
		eps = append(eps, m.client)
	}
	return eps
}

// leader returns the index of the member every running member names as
// leader.
func (s *soak) leader(ctx context.Context) (int, error) {
	ids := map[uint64]int{}
	var leaders []uint64
	for i, m := range s.members {
		if m.p == nil || m.p.exited() {
			continue
		}
		sctx, cancel := context.WithTimeout(ctx, time.Second)
		st, err := s.cli.Status(sctx, m.client)
		cancel()
		if err != nil {
			return -1, fmt.Errorf("status of %s: %w", m.name, err)
		}
		ids[st.Header.MemberId] = i
		leaders = append(leaders, st.Leader)
	}
	if len(leaders) == 0 {
		return -1, errors.New("no member running")
	}
	for _, l := range leaders {
		if l != leaders[0] {
			return -1, fmt.Errorf("members disagree on the leader: %x", leaders)
		}
	}
	i, ok := ids[leaders[0]]
	if !ok {
		return -1, fmt.Errorf("leader %x is not a running member", leaders[0])
	}
	return i, nil
}

// dbSizes asks each running member for its database size.
func (s *soak) dbSizes() map[string]int64 {
	out := map[string]int64{}
	for _, m := range s.members {
		if m.p == nil || m.p.exited() {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		st, err := s.cli.Status(ctx, m.client)
		cancel()
		if err == nil {
			out[m.name] = st.DbSize
		}
	}
	return out
}

// ---- sdwriter, its output, Prometheus ----

// mountOutput mounts the small tmpfs sdwriter writes to (the disk-full
// fault fills it).
func (s *soak) mountOutput() error {
	s.outDir = filepath.Join(s.o.workDir, "targets")
	if err := os.MkdirAll(s.outDir, 0o755); err != nil {
		return err
	}
	if err := run("mount", "-t", "tmpfs", "-o", "size="+outputSize+",mode=0755", "workersd-soak", s.outDir); err != nil {
		return err
	}
	s.mounted = true
	s.targets = filepath.Join(s.outDir, "workersd.json")
	return nil
}

func (s *soak) startSdwriter() error {
	p, err := s.start("", "sdwriter", nil, "", filepath.Join(s.o.binDir, "sdwriter"),
		"--etcd.endpoints="+strings.Join(s.endpoints(), ","),
		"--output.file="+s.targets, "--web.listen-address="+sdwriterAddr, "--log.level=debug")
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.sdw = p
	s.incarnation["sdwriter"]++
	s.mu.Unlock()
	return waitHTTP("http://"+sdwriterAddr+"/-/ready", 30*time.Second)
}

func (s *soak) startPrometheus() error {
	cfg := fmt.Sprintf(`global:
  scrape_interval: %s
  evaluation_interval: %s
scrape_configs:
  - job_name: workersd
    file_sd_configs:
      - files: [%q]
        refresh_interval: 1s
`, model.Duration(scrapeInterval), model.Duration(scrapeInterval), s.targets)
	path := filepath.Join(s.o.workDir, "prometheus.yml")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		return err
	}
	if _, err := s.start("", "prometheus", nil, "", s.o.prom, "--config.file="+path,
		"--storage.tsdb.path="+filepath.Join(s.o.workDir, "prometheus-data"),
		"--web.listen-address="+promAddr,
		"--enable-feature=created-timestamp-zero-ingestion"); err != nil {
		return err
	}
	s.promURL = "http://" + promAddr
	return waitHTTP(s.promURL+"/-/ready", 90*time.Second)
}

// ---- hosts: agent, gunicorn ----

type host struct {
	i        int
	ns, name string
	sock     string
	state    string
	web      string
	agent    *proc
	gunicorn *proc
	traffic  *traffic
}

func (s *soak) newHost(i int, ns string) *host {
	name := fmt.Sprintf("soak-%c", 'a'+i)
	return &host{i: i, ns: ns, name: name,
		sock:  filepath.Join(s.o.workDir, name+"-agent.sock"),
		state: filepath.Join(s.o.workDir, name+"-agent.json"),
		web:   fmt.Sprintf("%s:%d", hostIP(i), agentWebPort)}
}

func (s *soak) startAgent(h *host) error {
	p, err := s.start(h.ns, "agent-"+h.name, nil, "", filepath.Join(s.o.binDir, "workersd-agent"),
		"--etcd.endpoints="+strings.Join(s.endpoints(), ","), "--host="+h.name, "--ttl="+ttl.String(),
		"--listen.socket="+h.sock, "--state.file="+h.state, "--web.listen-address="+h.web, "--log.level=debug")
	if err != nil {
		return err
	}
	s.mu.Lock()
	h.agent = p
	s.incarnation["agent-"+h.name]++
	s.mu.Unlock()
	// Through its socket: its web address may be behind a cut link.
	return waitSocket(h.sock, 30*time.Second)
}

// waitSocket waits until the agent answers GET /v1/workers on its socket.
func waitSocket(sock string, timeout time.Duration) error {
	c := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		}}}
	defer c.CloseIdleConnections()
	deadline := time.Now().Add(timeout)
	for {
		resp, err := c.Get("http://agent/v1/workers")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = errors.New(resp.Status)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("agent on %s not answering after %s: %v", sock, timeout, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (s *soak) startGunicorn(h *host) error {
	env := []string{
		"GUNICORN_BIND=" + fmt.Sprintf("%s:%d", hostIP(h.i), gunicornPort),
		"GUNICORN_WORKERS=" + strconv.Itoa(gunicornWorkers[h.i]),
		"GUNICORN_MAX_REQUESTS=" + strconv.Itoa(maxRequests),
		"WORKERSD_JOB=" + pyJob,
		"WORKERSD_AGENT_SOCKET=" + h.sock,
		"WORKERSD_FINAL_SCRAPE_TIMEOUT=" + strconv.Itoa(int(finalScrapeTimeout.Seconds())),
		"PYTHONDONTWRITEBYTECODE=1", // nothing written into the checkout
	}
	p, err := s.start(h.ns, "gunicorn-"+h.name, env, filepath.Join(s.o.repo, "examples", "gunicorn"), s.gunicorn,
		"--config", "gunicorn.conf.py",
		// Longer than the final-scrape wait, which holds a worker in
		// worker_exit without a heartbeat.
		"--timeout", "120", "--graceful-timeout", "120",
		"app:app")
	if err != nil {
		return err
	}
	h.gunicorn = p
	return nil
}

// gunicornChildren lists the live (not zombie) children of each host's
// gunicorn master: its workers.
func (s *soak) gunicornChildren() map[int]int {
	masters := map[int]int{}
	for _, h := range s.hosts {
		if h.gunicorn != nil && !h.gunicorn.exited() {
			masters[h.gunicorn.pid()] = h.i
		}
	}
	out := map[int]int{}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return out
	}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...: comm may hold spaces.
		rest := string(b)
		if k := strings.LastIndexByte(rest, ')'); k >= 0 {
			rest = rest[k+1:]
		}
		f := strings.Fields(rest)
		if len(f) < 2 || f[0] == "Z" || f[0] == "X" {
			continue
		}
		ppid, _ := strconv.Atoi(f[1])
		if hi, ok := masters[ppid]; ok {
			out[pid] = hi
		}
	}
	return out
}

// alive says whether pid is a running process (not a zombie).
func alive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	rest := string(b)
	if k := strings.LastIndexByte(rest, ')'); k >= 0 {
		rest = rest[k+1:]
	}
	f := strings.Fields(rest)
	return len(f) > 0 && f[0] != "Z" && f[0] != "X"
}

// ---- Go workers ----

// demo is one lifetime of a demoworker on host b: it processes units
// units, then idles until it is recycled (SIGTERM) or killed.
type demo struct {
	p     *proc
	addr  string
	units int

	mu      sync.Mutex
	claimed bool // a stop or kill has begun: nobody reads its /metrics any more
	killed  bool
}

func (s *soak) startDemo() (*demo, error) {
	s.mu.Lock()
	units := 40 + s.work.IntN(260)
	s.mu.Unlock()
	h := s.hosts[1]
	p, err := s.start(h.ns, "demoworker", nil, "", filepath.Join(s.o.binDir, "demoworker"),
		"--etcd.endpoints="+strings.Join(s.endpoints(), ","), "--job="+goJob, "--host="+h.name,
		"--ttl="+ttl.String(), "--listen-address=0.0.0.0:0",
		"--jobs="+strconv.Itoa(units), "--rate=10", "--job-duration=2ms",
		"--final-scrape-timeout="+finalScrapeTimeout.String(), "--log.level=debug")
	if err != nil {
		return nil, err
	}
	addr, err := p.waitLine("listening on", 30*time.Second)
	if err != nil {
		p.kill()
		return nil, err
	}
	d := &demo{p: p, addr: addr, units: units}
	s.mu.Lock()
	s.demos[p.pid()] = d
	s.mu.Unlock()
	go s.runDemo(d)
	return d, nil
}

// processed reads the worker's own counter, unless a stop has begun (after
// SIGTERM any request to /metrics counts as the final scrape).
func (d *demo) processed() (float64, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.claimed {
		return 0, false
	}
	mfs, err := scrape("http://" + d.addr + "/metrics")
	if err != nil {
		return 0, false
	}
	return gauge(mfs, "demo_jobs_processed_total")
}

// claim marks the start of the lifetime's end; false if it had begun.
func (d *demo) claim() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.claimed {
		return false
	}
	d.claimed = true
	return true
}

// runDemo recycles the lifetime a few seconds after it finished its units
// (as max_requests would), accounts its truth when it exits and starts its
// replacement.
func (s *soak) runDemo(d *demo) {
	s.mu.Lock()
	idle := time.Duration(2000+s.work.IntN(8000)) * time.Millisecond
	s.mu.Unlock()
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	var finished time.Time
wait:
	for {
		select {
		case <-d.p.done:
			break wait
		case <-s.ending:
			break wait
		case <-tick.C:
		}
		if finished.IsZero() {
			if v, ok := d.processed(); ok && v == float64(d.units) {
				finished = time.Now()
			}
			continue
		}
		if time.Since(finished) > idle && s.inFile(d.p.pid()) && d.claim() {
			d.p.signal(syscall.SIGTERM)
			s.count("recycle (Go worker, SIGTERM after its units)")
			break
		}
	}
	<-d.p.done
	s.accountDemo(d)
	select {
	case <-s.ending:
		return
	default:
	}
	for {
		if _, err := s.startDemo(); err == nil {
			return
		} else {
			s.problem("start a Go worker: %v", err)
		}
		select {
		case <-s.ending:
			return
		case <-time.After(2 * time.Second):
		}
	}
}

// accountDemo adds an ended lifetime to the truth: what it printed after
// its final scrape, or, killed with SIGKILL, its units (it is killed only
// once Prometheus has them).
func (s *soak) accountDemo(d *demo) {
	log := d.p.log()
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.demos, d.p.pid())
	s.truth.goStarts++
	if d.killed {
		s.truth.goUnits += float64(d.units)
		return
	}
	for line := range strings.SplitSeq(log, "\n") {
		if rest, ok := strings.CutPrefix(line, "processed "); ok {
			n, err := strconv.Atoi(strings.TrimSuffix(rest, " units"))
			if err == nil {
				s.truth.goUnits += float64(n)
				if !strings.Contains(log, "final scrape delivered") { // worker.Stop: the scraper has the whole answer
					s.truth.unconfirmed = append(s.truth.unconfirmed, fmt.Sprintf("Go worker %d (%s) stopped without a final scrape (log %s)", d.p.pid(), d.addr, d.p.logPath))
				}
				return
			}
		}
	}
	s.truth.unconfirmed = append(s.truth.unconfirmed, fmt.Sprintf("Go worker %d (%s) exited (%v) without printing its count (log %s)", d.p.pid(), d.addr, d.p.cmd.ProcessState, d.p.logPath))
}
