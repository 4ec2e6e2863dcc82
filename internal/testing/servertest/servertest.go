//go:build linux

// Package servertest runs, for an end-to-end test of a real pre-fork server
// (gunicorn, uWSGI, Puma, Celery, Node's cluster), the workersd stack the
// server's workers register with: an embedded etcd, the host agent on a Unix
// socket, sdwriter writing a file_sd file, and Prometheus 3 scraping what the
// file lists in the setup docs/RESTARTS.md recommends. Each example's test
// starts its server with Stack.Env and checks what the stack saw.
package servertest

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/common/model"
	"github.com/workersd/workersd/etcdsd"
	"github.com/workersd/workersd/internal/procgroup"
	"github.com/workersd/workersd/internal/testing/buildtest"
	"github.com/workersd/workersd/internal/testing/etcdtest"
	"github.com/workersd/workersd/internal/testing/poll"
	"github.com/workersd/workersd/internal/testing/promtest"
	"github.com/workersd/workersd/registrar"
)

// Proc is a child process in its own process group, logged to a file that
// is printed if the test fails. The test's cleanup kills the group.
type Proc struct {
	Cmd *exec.Cmd
	// LogPath is the file its stdout and stderr go to.
	LogPath string
	waited  chan struct{}
}

// Run starts bin with args in dir's log <name>.log, with env added to
// the test's environment.
func Run(t testing.TB, dir, name string, env []string, bin string, args ...string) *Proc {
	t.Helper()
	logPath := filepath.Join(dir, name+".log")
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = procgroup.Attr()
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	f.Close()
	p := &Proc{Cmd: cmd, LogPath: logPath, waited: make(chan struct{})}
	go func() {
		cmd.Wait()
		close(p.waited)
	}()
	t.Cleanup(func() {
		p.Kill()
		if t.Failed() {
			t.Logf("--- %s log:\n%s", name, p.Log())
		}
	})
	return p
}

// Exited is closed once the process has exited and been waited for.
func (p *Proc) Exited() <-chan struct{} { return p.waited }

// Log is what the process has written so far.
func (p *Proc) Log() string {
	b, _ := os.ReadFile(p.LogPath)
	return string(b)
}

// Kill kills the process group and waits for the process.
func (p *Proc) Kill() {
	procgroup.Kill(p.Cmd.Process)
	<-p.waited
}

// Stop sends sig to the process and waits up to timeout for it to exit,
// then kills the group. It reports whether the process exited in time.
func (p *Proc) Stop(sig syscall.Signal, timeout time.Duration) bool {
	p.Cmd.Process.Signal(sig)
	select {
	case <-p.waited:
		procgroup.Kill(p.Cmd.Process)
		return true
	case <-time.After(timeout):
		p.Kill()
		return false
	}
}

// Options configure a Stack. Every field is optional.
type Options struct {
	// TTL is the agent's lease TTL. Optional, defaults to 5s.
	TTL time.Duration
	// SlotHold is the agent's --slot-hold. Optional, defaults to 15s:
	// Prometheus' ~10s discovery delay, a 200ms scrape interval, a margin.
	SlotHold time.Duration
	// ScrapeInterval is Prometheus'. Optional, defaults to 200ms.
	ScrapeInterval time.Duration
	// Extra scrape configs appended to Prometheus' configuration (YAML list
	// items, indented by two spaces), e.g. a comparison's static target.
	ExtraScrapeConfigs string
}

// Stack is a running etcd, agent, sdwriter and Prometheus.
type Stack struct {
	// Dir holds every file of the stack and the logs.
	Dir string
	// Socket is the agent's API socket.
	Socket string
	// TargetsFile is sdwriter's output.
	TargetsFile string
	// PromURL is Prometheus' base URL; SdwriterURL sdwriter's.
	PromURL, SdwriterURL string
	// Agent is the running agent; StopAgent and StartAgent replace it.
	Agent *Proc
	opts  Options
	bin   string
	etcd  *etcdtest.Server
}

// Start builds workersd-agent and sdwriter and starts the stack; it skips
// the test with -short, and fails it (in CI) or skips it when Prometheus 3
// is missing.
func Start(t testing.TB, o Options) *Stack {
	t.Helper()
	if testing.Short() {
		t.Skip("end-to-end; skipped with -short")
	}
	if o.TTL == 0 {
		o.TTL = 5 * time.Second
	}
	if o.SlotHold == 0 {
		o.SlotHold = 15 * time.Second
	}
	if o.ScrapeInterval == 0 {
		o.ScrapeInterval = 200 * time.Millisecond
	}
	prom := buildtest.RequirePrometheus3(t)
	dir := t.TempDir()
	s := &Stack{
		Dir:         dir,
		Socket:      filepath.Join(dir, "agent.sock"),
		TargetsFile: filepath.Join(dir, "targets.json"),
		opts:        o,
		bin:         filepath.Join(dir, "bin"),
	}
	if err := buildtest.Build(s.bin, "./cmd/workersd-agent", "./cmd/sdwriter"); err != nil {
		t.Fatal(err)
	}
	s.etcd = etcdtest.Start(t)
	s.StartAgent(t)
	sdwAddr := etcdtest.FreeAddr(t)
	Run(t, dir, "sdwriter", nil, filepath.Join(s.bin, "sdwriter"),
		"--etcd.endpoints="+s.etcd.Endpoint(), "--output.file="+s.TargetsFile,
		"--web.listen-address="+sdwAddr)
	s.SdwriterURL = "http://" + sdwAddr

	cfg := fmt.Sprintf(`global:
  scrape_interval: %s
  evaluation_interval: 1s
scrape_configs:
  - job_name: workersd
    file_sd_configs:
      - files: [%q]
        refresh_interval: 1s
%s`, promtest.Range(o.ScrapeInterval), s.TargetsFile, o.ExtraScrapeConfigs)
	p := StartPrometheus(t, "prometheus", prom, cfg, "--enable-feature=created-timestamp-zero-ingestion")
	p.Ready()
	s.PromURL = p.URL()
	return s
}

// Env is what a worker needs to find the agent, and to bind its metrics
// endpoint to loopback.
func (s *Stack) Env() []string {
	return []string{"WORKERSD_AGENT_SOCKET=" + s.Socket, "WORKERSD_METRICS_HOST=127.0.0.1"}
}

// StartAgent starts the agent (again, after StopAgent: it adopts what its
// state file holds) and waits for its socket.
func (s *Stack) StartAgent(t testing.TB) {
	t.Helper()
	s.Agent = Run(t, s.Dir, "agent", nil, filepath.Join(s.bin, "workersd-agent"),
		"--etcd.endpoints="+s.etcd.Endpoint(), "--host=test-host", "--ttl="+s.opts.TTL.String(),
		"--slot-hold="+s.opts.SlotHold.String(),
		"--listen.socket="+s.Socket, "--state.file="+filepath.Join(s.Dir, "agent.json"), "--log.level=debug")
	poll.Until(t, 10*time.Second, func() bool { _, err := os.Stat(s.Socket); return err == nil },
		"the agent's socket %s did not appear", s.Socket)
}

// StopAgent stops the agent with SIGTERM (which revokes nothing) and waits
// for it to exit.
func (s *Stack) StopAgent(t testing.TB) {
	t.Helper()
	if !s.Agent.Stop(syscall.SIGTERM, 10*time.Second) {
		t.Fatal("the agent did not stop within 10s of SIGTERM")
	}
}

// AgentReturns is the end of the scenario where workers boot while the
// agent is stopped (StopAgent, then the server started): it waits until n
// workers of server have logged marker (each says it found the agent away
// and keeps trying), starts the agent, and waits for the n workers in the
// targets file, failing the test beyond 5 s; it returns how long they
// took after the agent's return.
func (s *Stack) AgentReturns(t testing.TB, server *Proc, marker string, n int) time.Duration {
	t.Helper()
	var log string
	poll.Until(t, 60*time.Second, func() bool {
		log = server.Log()
		return strings.Count(log, marker) >= n
	}, "%d workers did not log %q while the agent was away:\n%s", n, marker, poll.Latest(&log))
	back := time.Now()
	s.StartAgent(t)
	s.WaitTargets(t, n, 5*time.Second)
	return time.Since(back)
}

// Target is one target group of the file_sd file: sdwriter writes one per
// worker.
type Target struct {
	Targets []string          `json:"targets"`
	Labels  map[string]string `json:"labels"`
}

// Pid is the worker's pid, from the metrics path of its own that every
// client registers (registrar.OwnMetricsPath: "/metrics/<pid>-<hex>");
// 0 for another path.
func (tg Target) Pid() int {
	rest, ok := strings.CutPrefix(tg.Labels[model.MetricsPathLabel], registrar.DefaultMetricsPath+"/")
	if !ok {
		return 0
	}
	pid, _, _ := strings.Cut(rest, "-")
	p, _ := strconv.Atoi(pid)
	return p
}

// Started returns when each registered worker started, by address, as
// sdwriter's status API (at sdwriterURL) shows it: the file carries no
// such label, to keep Prometheus' parse of it short.
func Started(t testing.TB, sdwriterURL string) map[string]time.Time {
	t.Helper()
	resp, err := http.Get(sdwriterURL + "/api/v1/status?limit=" + strconv.Itoa(etcdsd.MaxPage))
	if err != nil {
		t.Fatalf("sdwriter status: %v", err)
	}
	defer resp.Body.Close()
	var st struct {
		Discovery etcdsd.Status `json:"discovery"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("sdwriter status: %s, %v", resp.Status, err)
	}
	out := map[string]time.Time{}
	for _, r := range st.Discovery.Page {
		if r.Shown {
			out[r.Address] = r.StartedAt
		}
	}
	return out
}

// Targets reads sdwriter's file; nil before the first write.
func (s *Stack) Targets(t testing.TB) []Target {
	t.Helper()
	return ReadTargets(t, s.TargetsFile)
}

// ReadTargets reads a file_sd file; nil if there is none yet.
func ReadTargets(t testing.TB, path string) []Target {
	t.Helper()
	b, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var ts []Target
	if err := json.Unmarshal(b, &ts); err != nil {
		t.Fatalf("targets file: %v: %s", err, b)
	}
	return ts
}

// WaitTargets waits until the file lists exactly n targets, on distinct
// slots, and returns them.
func (s *Stack) WaitTargets(t testing.TB, n int, timeout time.Duration) []Target {
	t.Helper()
	var ts []Target
	var seen string
	poll.Until(t, timeout, func() bool {
		ts = s.Targets(t)
		slots := map[string]bool{}
		for _, tg := range ts {
			slots[tg.Labels["instance"]] = true
		}
		seen = fmt.Sprint(ts)
		return len(ts) == n && len(slots) == n
	}, "want %d targets on distinct instances in the file, last seen: %s", n, poll.Latest(&seen))
	return ts
}

// KillWorker kills the worker of tg with SIGKILL and returns how long it
// took to leave the file, failing the test beyond 1 s.
func (s *Stack) KillWorker(t testing.TB, tg Target) time.Duration {
	t.Helper()
	pid := tg.Pid()
	if pid == 0 {
		t.Fatalf("no pid in %+v", tg)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	return poll.Until(t, time.Second, func() bool {
		for _, x := range s.Targets(t) {
			if x.Pid() == pid {
				return false
			}
		}
		return true
	}, "worker %d still in the targets file 1s after kill -9", pid)
}

// WaitScraped waits until Prometheus has scraped every target of the file,
// successfully, after at: every count made before at is then in
// Prometheus.
func (s *Stack) WaitScraped(t testing.TB, job string, at time.Time, timeout time.Duration) {
	t.Helper()
	poll.Until(t, timeout, func() bool {
		want := len(s.Targets(t))
		ss, err := promtest.RawSamples(s.PromURL, fmt.Sprintf(`up{job=%q}`, job), time.Now().Add(-2*time.Second), time.Now())
		if err != nil || len(ss) < want {
			return false
		}
		fresh := 0
		for _, x := range ss {
			if last := x.Samples[len(x.Samples)-1]; last.T >= float64(at.UnixNano())/1e9+0.5 && last.V == 1 {
				fresh++
			}
		}
		return fresh >= want
	}, "Prometheus did not scrape every worker after %s", at.Format(time.RFC3339Nano))
}

// Total is the reset-aware total of sel's raw samples in Prometheus over
// (start, end]: what the job counted, each series from 0.
func (s *Stack) Total(t testing.TB, sel string, start, end time.Time) float64 {
	t.Helper()
	raw, _, err := promtest.Totals(s.PromURL, sel, start, end)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// CheckTotal fails the test unless Total is exactly truth, and then logs
// every series of sel (LogSeries); with WORKERSD_DUMP_SERIES set it logs
// them always.
func (s *Stack) CheckTotal(t testing.TB, sel string, start, end time.Time, truth float64) {
	t.Helper()
	got := s.Total(t, sel, start, end)
	if got != truth {
		t.Errorf("%s: Prometheus' total %v, want exactly %v", sel, got, truth)
	}
	if got != truth || os.Getenv("WORKERSD_DUMP_SERIES") != "" {
		LogSeries(t, s.PromURL, sel, start, end)
	}
}

// LogSeries logs every series of sel in the Prometheus at promURL,
// compressed to its changes (value@seconds since start), to show where a
// count was lost or doubled.
func LogSeries(t testing.TB, promURL, sel string, start, end time.Time) {
	t.Helper()
	ss, err := promtest.RawSamples(promURL, sel, start, end)
	if err != nil {
		t.Log(err)
		return
	}
	for _, x := range ss {
		var b strings.Builder
		prev := -1.0
		for _, p := range x.Samples {
			if p.V != prev {
				fmt.Fprintf(&b, " %g@%.2f", p.V, p.T-float64(start.UnixNano())/1e9)
				prev = p.V
			}
		}
		t.Logf("series %v:%s", x.Metric, b.String())
	}
}

// Watch follows the targets file every 20 ms in the background: every
// instance it ever held, when each registration left it, and whether it
// ever held more than max targets.
type Watch struct {
	stop      chan struct{}
	wg        sync.WaitGroup
	mu        sync.Mutex
	instances map[string]bool
	pids      map[int]bool
	ends      []time.Time
	err       error
}

// Watch starts following the file; Stop ends it.
func (s *Stack) Watch(max int) *Watch {
	w := &Watch{stop: make(chan struct{}), instances: map[string]bool{}, pids: map[int]bool{}}
	w.wg.Go(func() {
		live := map[int]bool{}
		for {
			select {
			case <-w.stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			b, err := os.ReadFile(s.TargetsFile)
			var ts []Target
			if err != nil || json.Unmarshal(b, &ts) != nil {
				continue
			}
			w.mu.Lock()
			if len(ts) > max && w.err == nil {
				w.err = fmt.Errorf("%d targets in the file, more than %d workers: %s", len(ts), max, b)
			}
			now := map[int]bool{}
			for _, tg := range ts {
				w.instances[tg.Labels["instance"]] = true
				w.pids[tg.Pid()] = true
				now[tg.Pid()] = true
			}
			for pid := range live {
				if !now[pid] {
					w.ends = append(w.ends, time.Now())
				}
			}
			live = now
			w.mu.Unlock()
		}
	})
	return w
}

// Stop ends the watch and checks it: never more targets than workers, and
// no more instances than registrar.MaxSlots allows for the registrations
// that ended. It returns the number of distinct workers (pids) and
// instances seen.
func (w *Watch) Stop(t testing.TB, s *Stack, workers int) (pids, instances int) {
	t.Helper()
	close(w.stop)
	w.wg.Wait()
	if w.err != nil {
		t.Error(w.err)
	}
	if bound := registrar.MaxSlots(workers, w.ends, s.opts.TTL, s.opts.SlotHold); len(w.instances) > bound {
		t.Errorf("%d instances in the targets file, above the stated bound %d", len(w.instances), bound)
	}
	return len(w.pids), len(w.instances)
}

// DriveRequests sends n GET requests to bind at a steady pace, each on a new
// connection; one in five asks for a missing page (a 404, the per-status
// counter's low-rate series).
func DriveRequests(t testing.TB, bind string, n int, every time.Duration) (ok, notFound int) {
	t.Helper()
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 30 * time.Second}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var reqErr error
	tick := time.NewTicker(every)
	defer tick.Stop()
	for i := range n {
		<-tick.C
		path := "/"
		if i%5 == 4 {
			path = "/missing"
		}
		wg.Go(func() {
			resp, err := client.Get("http://" + bind + path)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				reqErr = err
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			switch resp.StatusCode {
			case 200:
				ok++
			case 404:
				notFound++
			default:
				reqErr = fmt.Errorf("GET %s: status %d", path, resp.StatusCode)
			}
		})
	}
	wg.Wait()
	if reqErr != nil {
		t.Fatalf("request failed: %v", reqErr)
	}
	return ok, notFound
}
