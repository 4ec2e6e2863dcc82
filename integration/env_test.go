//go:build linux

package integration

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.yaml.in/yaml/v2"

	"github.com/workersd/workersd/internal/etcdclient"
	"github.com/workersd/workersd/internal/testing/buildtest"
	"github.com/workersd/workersd/internal/testing/etcdtest"
	"github.com/workersd/workersd/internal/testing/poll"
	"github.com/workersd/workersd/internal/testing/promtest"
	"github.com/workersd/workersd/registrar"
)

const prefix = "/workersd/v1/"

// env is one scenario's world: a 3-member etcd cluster with authentication
// on as docs/ETCD.md sets it up (each host's workers write with that host's
// user, sdwriter reads with a read-only user), sdwriter writing the targets
// file, Prometheus reading it with the example configuration.
type env struct {
	t       *testing.T
	prom    promSetup
	dir     string
	logs    string
	cluster *cluster
	targets string // sdwriter's output, Prometheus' file_sd file
	sdwAddr string
	sdw     *proc
	promURL string
}

// promSetup is a Prometheus server and how it runs.
type promSetup struct {
	name     string
	bin      func(testing.TB) string
	flags    []string
	interval time.Duration // scrape and evaluation interval; default 1s
}

// prom3 is the setup README recommends: Prometheus 3.x with created
// timestamps ingested as zero samples, which is how a counter's restart on
// a reused slot is seen.
func prom3() promSetup {
	return promSetup{name: "3.15 created-timestamp-zero-ingestion", bin: buildtest.RequirePrometheus3,
		flags: []string{"--enable-feature=created-timestamp-zero-ingestion"}}
}

// prom3Plain is Prometheus 3.x without feature flags.
func prom3Plain() promSetup { return promSetup{name: "3.15", bin: buildtest.RequirePrometheus3} }

// promDebian is Debian's Prometheus 2.42, the compatibility check.
func promDebian() promSetup {
	return promSetup{name: "2.42 (Debian)", bin: func(t testing.TB) string { return buildtest.RequireTool(t, "prometheus", "apt-get install prometheus") }}
}

// newEnv starts an environment with the recommended Prometheus setup.
func newEnv(t *testing.T) *env { return newEnvWith(t, prom3()) }

func newEnvWith(t *testing.T, prom promSetup) *env {
	t.Helper()
	endToEnd(t)
	if prom.interval == 0 {
		prom.interval = time.Second
	}
	dir := t.TempDir()
	e := &env{t: t, prom: prom, dir: dir, logs: filepath.Join(dir, "logs"), targets: filepath.Join(dir, "targets", "workersd.json"), sdwAddr: etcdtest.FreeAddr(t)}
	for _, d := range []string{e.logs, filepath.Dir(e.targets)} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	start := time.Now()
	e.cluster = startCluster(e, 3)
	e.cluster.enableAuth()
	clusterUp := time.Since(start)
	e.startSdwriter()
	e.waitSdwriterReady(30 * time.Second)
	e.startPrometheus()
	t.Logf("environment up in %s (3-member etcd cluster with authentication %s, binaries built in %s, Prometheus %s)", time.Since(start).Round(time.Millisecond), clusterUp.Round(time.Millisecond), build.took.Round(time.Millisecond), prom.name)
	return e
}

var httpClient = &http.Client{Timeout: 5 * time.Second}

// ---- etcd cluster ----

type member struct {
	name, dir, client, peer string
	p                       *proc
}

type cluster struct {
	e       *env
	members []*member
	initial string
	token   string

	mu      sync.Mutex
	admin   *clientv3.Client // as root, once authentication is on
	granted map[[2]string]bool
}

// startCluster starts n members at once (a member of a multi-member
// cluster is ready only once a quorum is up) and waits until all serve.
func startCluster(e *env, n int) *cluster {
	e.t.Helper()
	c := &cluster{e: e, token: fmt.Sprintf("workersd-it-%d", time.Now().UnixNano())}
	var parts []string
	for i := range n {
		m := &member{name: fmt.Sprintf("m%d", i), client: etcdtest.FreeAddr(e.t), peer: etcdtest.FreeAddr(e.t)}
		m.dir = filepath.Join(e.dir, "etcd", m.name)
		c.members = append(c.members, m)
		parts = append(parts, m.name+"=http://"+m.peer)
	}
	c.initial = strings.Join(parts, ",")
	idx := make([]int, n)
	for i := range idx {
		idx[i] = i
	}
	c.start(idx...)
	return c
}

// start launches the members idx (on their data directories: a restarted
// member rejoins with its data) and waits until each serves clients.
func (c *cluster) start(idx ...int) {
	c.e.t.Helper()
	for _, i := range idx {
		m := c.members[i]
		m.p = startProc(c.e.t, c.e.logs, "etcd-"+m.name, filepath.Join(binDir, "etcdmember"),
			"--name="+m.name, "--data-dir="+m.dir,
			"--client-address="+m.client, "--peer-address="+m.peer,
			"--initial-cluster="+c.initial, "--cluster-token="+c.token,
			"--unsafe-no-fsync", // a process kill loses nothing the OS has
		)
	}
	for _, i := range idx {
		if _, err := c.members[i].p.waitLine("ready", 60*time.Second); err != nil {
			c.e.t.Fatal(err)
		}
	}
}

func (c *cluster) endpoints() []string {
	var eps []string
	for _, m := range c.members {
		eps = append(eps, m.client)
	}
	return eps
}

// client returns a client of the whole cluster as root, closed when the
// test ends.
func (c *cluster) client() *clientv3.Client {
	c.e.t.Helper()
	return c.clientAs("root", rootPassword)
}

func (c *cluster) clientAs(user, password string) *clientv3.Client {
	c.e.t.Helper()
	cli, err := etcdclient.New(c.endpoints(), clientv3.Config{Username: user, Password: password})
	if err != nil {
		c.e.t.Fatal(err)
	}
	c.e.t.Cleanup(func() { cli.Close() })
	return cli
}

// enableAuth adds root and sdwriter's read-only user and turns
// authentication on; hosts' users come with their first worker (grantHost).
func (c *cluster) enableAuth() {
	c.e.t.Helper()
	open := c.clientAs("", "")
	authUsers(c.e.t, open)
	authEnable(c.e.t, open)
	c.admin = c.client()
	c.granted = map[[2]string]bool{}
}

// grantHost lets host's user write job's registrations on host, as an
// admin would before deploying job there, and returns the user and the
// file holding its password.
func (c *cluster) grantHost(job, host string) (user, passwordFile string, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	passwordFile = filepath.Join(c.e.dir, "etcd-"+host+".password")
	if !c.granted[[2]string{job, host}] {
		if err := authGrantHost(c.admin, job, host); err != nil {
			return "", "", err
		}
		if err := os.WriteFile(passwordFile, []byte(hostPassword(host)+"\n"), 0o600); err != nil {
			return "", "", err
		}
		c.granted[[2]string{job, host}] = true
	}
	return host, passwordFile, nil
}

// leader asks the running members who leads and returns its index, once
// every running member agrees on a leader that is running.
func (c *cluster) leader(ctx context.Context, cli *clientv3.Client) (int, error) {
	ids := map[uint64]int{}
	var leaders []uint64
	for i, m := range c.members {
		if m.p == nil || m.p.exited() {
			continue
		}
		sctx, cancel := context.WithTimeout(ctx, time.Second)
		st, err := cli.Status(sctx, m.client)
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
			return -1, fmt.Errorf("members disagree on the leader: %v", leaders)
		}
	}
	i, ok := ids[leaders[0]]
	if !ok {
		return -1, fmt.Errorf("leader %x is not a running member", leaders[0])
	}
	return i, nil
}

// registrations lists the registrations of job in etcd: address -> key.
func registrations(ctx context.Context, cli *clientv3.Client, job string) (map[string]string, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, prefix+job+"/", clientv3.WithPrefix())
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, kv := range resp.Kvs {
		var v struct {
			Address string `json:"address"`
		}
		if err := json.Unmarshal(kv.Value, &v); err != nil {
			return nil, fmt.Errorf("%s: %w", kv.Key, err)
		}
		out[v.Address] = string(kv.Key)
	}
	return out, nil
}

// ---- sdwriter ----

func (e *env) startSdwriter() {
	e.t.Helper()
	pw := e.sdwriterPasswordFile()
	e.sdw = startProc(e.t, e.logs, "sdwriter", filepath.Join(binDir, "sdwriter"),
		"--etcd.endpoints="+strings.Join(e.cluster.endpoints(), ","),
		"--etcd.username=sdwriter", "--etcd.password-file="+pw,
		"--output.file="+e.targets,
		"--web.listen-address="+e.sdwAddr,
		"--log.level=debug",
	)
}

// sdwriterPasswordFile holds the password of sdwriter's read-only etcd
// user.
func (e *env) sdwriterPasswordFile() string {
	e.t.Helper()
	pw := filepath.Join(e.dir, "etcd-sdwriter.password")
	if err := os.WriteFile(pw, []byte(sdwriterPassword+"\n"), 0o600); err != nil {
		e.t.Fatal(err)
	}
	return pw
}

func (e *env) waitSdwriterReady(timeout time.Duration) {
	e.t.Helper()
	poll.Until(e.t, timeout, func() bool {
		resp, err := httpClient.Get("http://" + e.sdwAddr + "/-/ready")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}, "sdwriter on %s not ready", e.sdwAddr)
}

// sdwriterMetrics scrapes sdwriter's /metrics.
func (e *env) sdwriterMetrics() (map[string]*dto.MetricFamily, error) {
	return scrape(e.sdwAddr)
}

func scrape(addr string) (map[string]*dto.MetricFamily, error) {
	resp, err := httpClient.Get("http://" + addr + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s/metrics: %s", addr, resp.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	return p.TextToMetricFamilies(resp.Body)
}

// metricSum adds up every series of a counter or gauge family.
func metricSum(mfs map[string]*dto.MetricFamily, name string) (float64, bool) {
	mf, ok := mfs[name]
	if !ok {
		return 0, false
	}
	sum := 0.0
	for _, m := range mf.GetMetric() {
		switch {
		case m.Counter != nil:
			sum += m.GetCounter().GetValue()
		case m.Gauge != nil:
			sum += m.GetGauge().GetValue()
		case m.Untyped != nil:
			sum += m.GetUntyped().GetValue()
		}
	}
	return sum, true
}

// ---- the targets file ----

type target struct {
	Address string
	Labels  map[string]string
}

// readTargets parses the file_sd file; every group must be well formed.
func readTargets(path string) ([]target, []byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, err
	}
	var groups []struct {
		Targets []string          `json:"targets"`
		Labels  map[string]string `json:"labels"`
	}
	if err := json.Unmarshal(b, &groups); err != nil {
		return nil, b, fmt.Errorf("%s is not valid file_sd JSON: %w", path, err)
	}
	var out []target
	for _, g := range groups {
		if len(g.Targets) == 0 {
			return nil, b, fmt.Errorf("%s: a group without targets", path)
		}
		for _, a := range g.Targets {
			out = append(out, target{Address: a, Labels: g.Labels})
		}
	}
	return out, b, nil
}

// fileTargets returns the targets of job in the file, by address.
func (e *env) fileTargets(job string) (map[string]target, error) {
	ts, _, err := readTargets(e.targets)
	if err != nil {
		return nil, err
	}
	out := map[string]target{}
	for _, t := range ts {
		if t.Labels["job"] == job {
			out[t.Address] = t
		}
	}
	return out, nil
}

// waitFileAddrs waits until the file holds exactly the addresses want for
// job and returns how long that took.
func (e *env) waitFileAddrs(job string, want []string, timeout time.Duration) time.Duration {
	e.t.Helper()
	return eventually(e.t, timeout, fmt.Sprintf("targets file: job %s, want %v", job, sorted(want)), func() (bool, string) {
		ts, err := e.fileTargets(job)
		if err != nil {
			return false, err.Error()
		}
		got := sortedKeys(ts)
		return slices.Equal(got, sorted(want)), fmt.Sprintf("have %v", got)
	})
}

// eventually calls cond until it reports true and fails the test if it has
// not within timeout, with cond's last description. It returns how long it
// took.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() (bool, string)) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		ok, last := cond()
		if ok {
			return time.Since(start)
		}
		if time.Since(start) > timeout {
			t.Fatalf("after %s: %s: %s", timeout, what, last)
		}
		time.Sleep(poll.Interval)
	}
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func sorted(s []string) []string {
	s = slices.Clone(s)
	sort.Strings(s)
	return s
}

// fileWatch reads the targets file in a loop and records every read that
// check rejects.
type fileWatch struct {
	stop     chan struct{}
	done     chan struct{}
	reads    int
	problems []string
	failures int
}

func (e *env) watchFile(every time.Duration, check func(ts []target, raw []byte, err error) error) *fileWatch {
	w := &fileWatch{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		for {
			ts, raw, err := readTargets(e.targets)
			w.reads++
			if perr := check(ts, raw, err); perr != nil {
				w.failures++
				if len(w.problems) < 5 {
					w.problems = append(w.problems, time.Now().Format("15:04:05.000")+" "+perr.Error())
				}
			}
			select {
			case <-w.stop:
				return
			case <-time.After(every):
			}
		}
	}()
	e.t.Cleanup(w.Stop)
	return w
}

// Stop ends the loop; reads, failures and problems are then final.
func (w *fileWatch) Stop() {
	select {
	case <-w.stop:
	default:
		close(w.stop)
	}
	<-w.done
}

// ---- workers ----

type workerOpts struct {
	job, host   string
	ttl         time.Duration // default 2s
	slotHold    time.Duration // default: the registrar's (30s)
	jobs        int           // units to process, then idle; 0 without limit
	idle        bool          // process nothing at all
	rate        float64       // units enqueued per second; 0 as fast as processed
	jobDuration time.Duration // default 2ms
	finalScrape time.Duration // default 30s: Prometheus may take 10s to see a new target
}

// demoworkerHold is demoworker's --slot-hold for workerOpts.slotHold, which
// means what registrar.Config.SlotHold does (0: the default, negative: no
// hold); the flag means what the agent's does (0s: no hold).
func demoworkerHold(d time.Duration) time.Duration {
	switch {
	case d == 0:
		return registrar.DefaultSlotHold
	case d < 0:
		return 0
	}
	return d
}

type worker struct {
	*proc
	opts workerOpts
	addr string
}

// startWorker starts a demoworker and waits for its address; it registers
// in the background. startWorkerErr is the same for other goroutines.
func (e *env) startWorker(o workerOpts) *worker {
	e.t.Helper()
	w, err := e.startWorkerErr(o)
	if err != nil {
		e.t.Fatal(err)
	}
	return w
}

func (e *env) startWorkerErr(o workerOpts) (*worker, error) {
	if o.ttl == 0 {
		o.ttl = 2 * time.Second
	}
	if o.jobDuration == 0 {
		o.jobDuration = 2 * time.Millisecond
	}
	if o.finalScrape == 0 {
		o.finalScrape = 30 * time.Second
	}
	jobs, rate := o.jobs, o.rate
	if o.idle {
		jobs, rate = 1, 0.0001 // the first unit would come after hours
	}
	user, pw, err := e.cluster.grantHost(o.job, o.host)
	if err != nil {
		return nil, err
	}
	p, err := startProcErr(e.t, e.logs, "worker-"+o.job+"-"+o.host, filepath.Join(binDir, "demoworker"),
		"--etcd.endpoints="+strings.Join(e.cluster.endpoints(), ","),
		"--etcd.username="+user, "--etcd.password-file="+pw,
		"--job="+o.job, "--host="+o.host, "--ttl="+o.ttl.String(),
		"--listen-address=127.0.0.1:0",
		"--jobs="+strconv.Itoa(jobs), "--rate="+strconv.FormatFloat(rate, 'f', -1, 64),
		"--job-duration="+o.jobDuration.String(),
		"--final-scrape-timeout="+o.finalScrape.String(),
		"--slot-hold="+demoworkerHold(o.slotHold).String(),
		"--log.level=debug",
	)
	if err != nil {
		return nil, err
	}
	addr, err := p.waitLine("listening on", 30*time.Second)
	if err != nil {
		return nil, err
	}
	return &worker{proc: p, opts: o, addr: addr}, nil
}

// processed reads the worker's own counter. Not after SIGTERM: any request
// to /metrics then counts as the final scrape.
func (w *worker) processed() (float64, error) {
	mfs, err := scrape(w.addr)
	if err != nil {
		return 0, err
	}
	v, ok := metricSum(mfs, "demo_jobs_processed_total")
	if !ok {
		return 0, errors.New("no demo_jobs_processed_total")
	}
	return v, nil
}

// waitProcessed waits until the worker has processed n units.
func (w *worker) waitProcessed(n int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var last float64
	var err error
	for time.Now().Before(deadline) {
		if last, err = w.processed(); err == nil && last == float64(n) {
			return nil
		}
		time.Sleep(5 * time.Millisecond)
	}
	return fmt.Errorf("worker %s processed %v of %d units after %s (last error %v)", w.addr, last, n, timeout, err)
}

// ---- Prometheus ----

// startPrometheus runs the environment's Prometheus with
// examples/prometheus.yml, its discovery pointed at this environment and its
// intervals shortened.
func (e *env) startPrometheus() {
	e.t.Helper()
	bin := e.prom.bin(e.t)
	cfg := filepath.Join(e.dir, "prometheus.yml")
	if err := os.WriteFile(cfg, e.prometheusConfig(), 0o644); err != nil {
		e.t.Fatal(err)
	}
	addr := etcdtest.FreeAddr(e.t)
	e.promURL = "http://" + addr
	startProc(e.t, e.logs, "prometheus", bin, append([]string{
		"--config.file=" + cfg,
		"--storage.tsdb.path=" + filepath.Join(e.dir, "prometheus-data"),
		"--web.listen-address=" + addr,
		"--web.enable-lifecycle",
	}, e.prom.flags...)...)
	poll.Until(e.t, 60*time.Second, func() bool {
		resp, err := httpClient.Get(e.promURL + "/-/ready")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}, "prometheus on %s not ready", addr)
}

// prometheusConfig is examples/prometheus.yml with file_sd reading this
// environment's file (refreshed every second), http_sd asking this
// sdwriter, the sdwriter job scraping it, rule files resolved against
// examples/ and every interval the setup's (1s by default).
func (e *env) prometheusConfig() []byte {
	e.t.Helper()
	example, err := filepath.Abs(filepath.Join("..", "examples", "prometheus.yml"))
	if err != nil {
		e.t.Fatal(err)
	}
	b, err := os.ReadFile(example)
	if err != nil {
		e.t.Fatal(err)
	}
	var cfg map[string]any
	if err := yaml.Unmarshal(b, &cfg); err != nil {
		e.t.Fatalf("%s: %v", example, err)
	}
	global, _ := cfg["global"].(map[any]any)
	if global == nil {
		global = map[any]any{}
	}
	iv := model.Duration(e.prom.interval).String()
	global["scrape_interval"], global["evaluation_interval"] = iv, iv
	delete(global, "scrape_timeout")
	cfg["global"] = global
	if rules, ok := cfg["rule_files"].([]any); ok {
		for i, r := range rules {
			if s, ok := r.(string); ok && !filepath.IsAbs(s) {
				rules[i] = filepath.Join(filepath.Dir(example), s)
			}
		}
	}
	delete(cfg, "alerting")
	var fileSD, sdwriterJob bool
	scs, _ := cfg["scrape_configs"].([]any)
	for _, sc := range scs {
		m, ok := sc.(map[any]any)
		if !ok {
			continue
		}
		delete(m, "scrape_interval")
		delete(m, "scrape_timeout")
		if fs, ok := m["file_sd_configs"].([]any); ok {
			for _, f := range fs {
				if fm, ok := f.(map[any]any); ok {
					fm["files"] = []string{e.targets}
					fm["refresh_interval"] = "1s"
					fileSD = true
				}
			}
		}
		if hs, ok := m["http_sd_configs"].([]any); ok {
			for _, h := range hs {
				if hm, ok := h.(map[any]any); ok {
					hm["url"] = "http://" + e.sdwAddr + "/sd"
				}
			}
		}
		if m["job_name"] == "workersd-sdwriter" {
			m["static_configs"] = []any{map[string]any{"targets": []string{e.sdwAddr}}}
			sdwriterJob = true
		}
	}
	if !fileSD || !sdwriterJob {
		e.t.Fatalf("%s: want a file_sd_configs job and a workersd-sdwriter job (file_sd %v, sdwriter job %v)", example, fileSD, sdwriterJob)
	}
	out, err := yaml.Marshal(cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	return out
}

type sample struct {
	Metric map[string]string
	T      float64
	V      float64
}

type series struct {
	Metric map[string]string
	Points []sample
}

func parsePoint(p []any) (float64, float64, error) {
	if len(p) != 2 {
		return 0, 0, fmt.Errorf("point %v", p)
	}
	ts, ok := p[0].(float64)
	vs, ok2 := p[1].(string)
	if !ok || !ok2 {
		return 0, 0, fmt.Errorf("point %v", p)
	}
	v, err := strconv.ParseFloat(vs, 64)
	return ts, v, err
}

func (e *env) api(path string, params url.Values, data any) error {
	return promtest.API(e.promURL, path, params, data)
}

// query evaluates an instant query at time at (now when zero).
func (e *env) query(q string, at time.Time) ([]sample, error) {
	params := url.Values{"query": {q}}
	if !at.IsZero() {
		params.Set("time", strconv.FormatFloat(float64(at.UnixNano())/1e9, 'f', 3, 64))
	}
	var data struct {
		ResultType string `json:"resultType"`
		Result     []struct {
			Metric map[string]string `json:"metric"`
			Value  []any             `json:"value"`
		} `json:"result"`
	}
	if err := e.api("/api/v1/query", params, &data); err != nil {
		return nil, err
	}
	if data.ResultType != "vector" {
		return nil, fmt.Errorf("%s: result type %s, want vector", q, data.ResultType)
	}
	var out []sample
	for _, r := range data.Result {
		ts, v, err := parsePoint(r.Value)
		if err != nil {
			return nil, err
		}
		out = append(out, sample{Metric: r.Metric, T: ts, V: v})
	}
	return out, nil
}

// scalar evaluates a query that should give one sample; ok is false when
// it gives none.
func (e *env) scalar(q string) (v float64, ok bool, err error) {
	s, err := e.query(q, time.Time{})
	if err != nil || len(s) == 0 {
		return 0, false, err
	}
	if len(s) > 1 {
		return 0, false, fmt.Errorf("%s: %d samples, want one", q, len(s))
	}
	return s[0].V, true, nil
}

// waitScalar waits until q gives exactly want.
func (e *env) waitScalar(q string, want float64, timeout time.Duration) time.Duration {
	e.t.Helper()
	return eventually(e.t, timeout, fmt.Sprintf("%s, want %v", q, want), func() (bool, string) {
		v, ok, err := e.scalar(q)
		switch {
		case err != nil:
			return false, err.Error()
		case !ok:
			return false, "no sample"
		}
		return v == want, "have " + strconv.FormatFloat(v, 'f', -1, 64)
	})
}

func (e *env) queryRange(q string, start, end time.Time, step time.Duration) ([]series, error) {
	params := url.Values{
		"query": {q},
		"start": {strconv.FormatFloat(float64(start.UnixNano())/1e9, 'f', 3, 64)},
		"end":   {strconv.FormatFloat(float64(end.UnixNano())/1e9, 'f', 3, 64)},
		"step":  {strconv.FormatFloat(step.Seconds(), 'f', -1, 64)},
	}
	var data struct {
		Result []struct {
			Metric map[string]string `json:"metric"`
			Values [][]any           `json:"values"`
		} `json:"result"`
	}
	if err := e.api("/api/v1/query_range", params, &data); err != nil {
		return nil, err
	}
	var out []series
	for _, r := range data.Result {
		s := series{Metric: r.Metric}
		for _, p := range r.Values {
			ts, v, err := parsePoint(p)
			if err != nil {
				return nil, err
			}
			s.Points = append(s.Points, sample{T: ts, V: v})
		}
		out = append(out, s)
	}
	return out, nil
}

// seriesLabels lists the label sets of the series matching match over
// [start, end].
func (e *env) seriesLabels(match string, start, end time.Time) ([]map[string]string, error) {
	params := url.Values{
		"match[]": {match},
		"start":   {strconv.FormatFloat(float64(start.UnixNano())/1e9, 'f', 3, 64)},
		"end":     {strconv.FormatFloat(float64(end.UnixNano())/1e9, 'f', 3, 64)},
	}
	var out []map[string]string
	err := e.api("/api/v1/series", params, &out)
	return out, err
}

type activeTarget struct {
	Labels    map[string]string `json:"labels"`
	ScrapeURL string            `json:"scrapeUrl"`
	Health    string            `json:"health"`
	LastError string            `json:"lastError"`
}

// activeTargets returns Prometheus' active targets of job, by address.
func (e *env) activeTargets(job string) (map[string]activeTarget, error) {
	var data struct {
		Active []activeTarget `json:"activeTargets"`
	}
	if err := e.api("/api/v1/targets", url.Values{"state": {"active"}}, &data); err != nil {
		return nil, err
	}
	out := map[string]activeTarget{}
	for _, t := range data.Active {
		if t.Labels["job"] != job {
			continue
		}
		u, err := url.Parse(t.ScrapeURL)
		if err != nil {
			return nil, err
		}
		out[u.Host] = t
	}
	return out, nil
}

// waitActiveUp waits until Prometheus' active targets of job are exactly
// the addresses want, each scraped successfully.
func (e *env) waitActiveUp(job string, want []string, timeout time.Duration) time.Duration {
	e.t.Helper()
	return eventually(e.t, timeout, fmt.Sprintf("prometheus active targets of %s, want %v all up", job, sorted(want)), func() (bool, string) {
		ts, err := e.activeTargets(job)
		if err != nil {
			return false, err.Error()
		}
		var have []string
		up := true
		for a, t := range ts {
			have = append(have, a+"="+t.Health)
			up = up && t.Health == "up"
		}
		sort.Strings(have)
		return up && slices.Equal(sortedKeys(ts), sorted(want)), fmt.Sprintf("have %v", have)
	})
}

// ---- small helpers ----

func addrs(ws ...*worker) []string {
	var out []string
	for _, w := range ws {
		out = append(out, w.addr)
	}
	return out
}
