//go:build linux

package clienttest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/workersd/workersd/internal/procgroup"
	"github.com/workersd/workersd/internal/testing/etcdtest"
	"github.com/workersd/workersd/internal/testing/logtest"
	"github.com/workersd/workersd/internal/testing/poll"
	"github.com/workersd/workersd/internal/testing/servertest"
)

// Driver is a client's scenario driver: a small program of the client's
// (clients/python/tests/scenario_driver.py, clients/ruby/test/scenario_driver.rb,
// clients/node/test-support/scenario-driver.js) that Scenario runs and
// drives by a line protocol, the same for every client:
//
// At its start the driver creates a counter scenario_events (exposed as
// scenario_events_total) with the client's usual metrics library, builds
// the client's Worker from the environment alone (WORKERSD_JOB,
// WORKERSD_LABELS, WORKERSD_AGENT_SOCKET, WORKERSD_METRICS_HOST,
// WORKERSD_FINAL_SCRAPE_TIMEOUT: docs/CLIENTS.md) and starts it. It then
// reads commands on stdin, one a line, and writes one JSON event a line on
// stdout:
//
//	(start)                    {"event":"started","pid":P,"port":N,"path":"/metrics/..."}
//	                           or, when the Worker refuses its configuration,
//	                           {"event":"config_error","error":"..."} and exit status 2
//	inc N                      counts N: {"event":"inc","total":T}
//	register SOCKET JOB PORT   one call of the client's agent API (its own pid):
//	                           {"event":"registered","state":...,"key":...} or
//	                           {"event":"agent_error","status":S|null,"retryable":B,
//	                            "field":F|null,"error":"..."}
//	stop                       the Worker's graceful stop: {"event":"stopped"}
//	(end of stdin)             exit status 0
type Driver struct {
	// Dir is the directory the driver runs in.
	Dir string
	// Env is added to the environment (e.g. where the client is installed).
	Env []string
	// Args is the command line: the interpreter and its arguments.
	Args []string
}

// scenarioTimeout bounds each wait of the scenario: generous, since an
// interpreter starts slowly on a loaded machine, and a wait that ends
// sooner ends as soon as it can.
const scenarioTimeout = 30 * time.Second

// Scenario runs the one scenario every client must pass, written once
// for the three: the steps below, against a real workersd-agent and etcd,
// with the assertions docs/CLIENTS.md makes.
func Scenario(t *testing.T, d Driver) {
	bin := agentBinary(t)
	etcd := etcdtest.Start(t)
	dir := t.TempDir()
	s := &scenario{t: t, d: d, cli: etcd.Client(t), dir: dir, sock: filepath.Join(dir, "agent.sock")}

	t.Log("a Worker refuses a configuration without a job, or with labels or a timeout it cannot read, naming the variable")
	s.configError([]string{"WORKERSD_JOB=", "WORKERSD_LABELS="}, "WORKERSD_JOB")
	s.configError([]string{"WORKERSD_JOB=" + scenarioJob, "WORKERSD_LABELS=team=core,oops"}, "WORKERSD_LABELS", "oops")
	s.configError([]string{"WORKERSD_JOB=" + scenarioJob, "WORKERSD_LABELS=", "WORKERSD_FINAL_SCRAPE_TIMEOUT=soon"},
		"WORKERSD_FINAL_SCRAPE_TIMEOUT", "soon")

	t.Log("the Worker starts and serves before the agent is up")
	w := s.startWorker()

	t.Log("an agent that does not answer is a retryable error naming the socket")
	absent := filepath.Join(dir, "absent.sock")
	w.p.send("register %s %s 1", absent, scenarioJob)
	e := w.p.next("agent_error")
	if e["status"] != nil || e["retryable"] != true || e["field"] != nil || !strings.Contains(e.str("error"), absent) {
		t.Fatalf("unreachable agent: %v, want status null, retryable true, field null, error naming %s", e, absent)
	}

	t.Log("the Worker's first attempt fails, logged once; once the agent starts, the Worker, retrying, registers under the documented key")
	poll.Until(t, scenarioTimeout, func() bool { return strings.Contains(w.p.stderr.String(), unreachableLog) },
		"the driver never logged %q:\n%s", unreachableLog, w.p.stderr)
	servertest.Run(t, dir, "agent", nil, bin, "--etcd.endpoints="+etcd.Endpoint(), "--etcd.prefix="+scenarioPrefix,
		"--host=test-host", "--advertise.host=127.0.0.1", "--listen.socket="+s.sock,
		"--state.file="+filepath.Join(dir, "agent.json"))
	v := s.registered(w)
	if n := strings.Count(w.p.stderr.String(), unreachableLog); n != 1 {
		t.Fatalf("%q logged %d times, want once:\n%s", unreachableLog, n, w.p.stderr)
	}

	t.Log("the registered address and path serve the client's metrics library")
	s.serves(w)

	t.Log("a request the agent refuses is not retryable and carries the agent's own text and field")
	s.refused(w, v)

	t.Log("stop waits for a final scrape, deregisters and closes the endpoint")
	s.stops(w)
	w.p.end()
}

// worker is the driver's running Worker.
type worker struct {
	p         *driverProc
	pid, port int
	path      string
	addr      string // 127.0.0.1:port
	key       string // where it registers
}

// startWorker starts the driver with job and labels in the environment; its
// endpoint must serve at once, on a path of its own.
func (s *scenario) startWorker() *worker {
	s.t.Helper()
	p := s.start([]string{"WORKERSD_JOB=" + scenarioJob, "WORKERSD_LABELS= team=core, tier = web ,"})
	st := p.next("started")
	w := &worker{p: p, pid: int(st.num("pid")), port: int(st.num("port")), path: st.str("path"),
		key: scenarioPrefix + scenarioJob + "/test-host/0"}
	w.addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(w.port))
	if want := regexp.MustCompile(`^/metrics/` + strconv.Itoa(w.pid) + `-[0-9a-f]{16}$`); !want.MatchString(w.path) {
		s.t.Fatalf("own metrics path %q, want %s (docs/KEYS.md)", w.path, want)
	}
	if code, _, _ := get(s.t, w.addr, "/metrics", ""); code != http.StatusOK {
		s.t.Fatalf("GET /metrics before the agent is up: %d, want 200", code)
	}
	return w
}

// registered waits for w's key and checks its value: every field as
// docs/KEYS.md documents it, the labels from WORKERSD_LABELS.
func (s *scenario) registered(w *worker) value {
	s.t.Helper()
	var v value
	poll.Until(s.t, scenarioTimeout, func() bool { return s.value(w.key, &v) }, "%s never appeared in etcd", w.key)
	want := value{Address: w.addr, MetricsPath: w.path, PID: w.pid, StartedAt: v.StartedAt,
		Labels: map[string]string{"team": "core", "tier": "web"}}
	if _, err := time.Parse(time.RFC3339, v.StartedAt); err != nil || !v.equal(want) || (v.Scheme != "" && v.Scheme != "http") {
		s.t.Fatalf("%s = %+v, want %+v with started_at in RFC 3339", w.key, v, want)
	}
	return v
}

// serves checks what w's registered address and path serve: the count, in
// the text format and in OpenMetrics with created timestamps; another
// worker's path is a 404.
func (s *scenario) serves(w *worker) {
	s.t.Helper()
	w.p.send("inc 5")
	w.p.next("inc")
	if got := s.total(w.addr, w.path); got != 5 {
		s.t.Fatalf("scenario_events_total = %v at %s%s, want 5", got, w.addr, w.path)
	}
	code, typ, body := get(s.t, w.addr, w.path, openMetricsAccept)
	if code != http.StatusOK || !strings.HasPrefix(typ, "application/openmetrics-text") ||
		!regexp.MustCompile(`(?m)^scenario_events_created [0-9.e+]+$`).MatchString(body) {
		s.t.Fatalf("an OpenMetrics scrape got %d %q:\n%s\nwant scenario_events_created (docs/RESTARTS.md)", code, typ, body)
	}
	if code, _, _ := get(s.t, w.addr, fmt.Sprintf("/metrics/%d-%016x", w.pid, 0), ""); code != http.StatusNotFound {
		s.t.Fatalf("a path not the worker's own answered %d, want 404", code)
	}
}

// refused has the client send a request the agent refuses: the client
// must report exactly what the agent answers, and nothing changes.
func (s *scenario) refused(w *worker, v value) {
	s.t.Helper()
	w.p.send("register %s bad/job %d", s.sock, w.port)
	e := w.p.next("agent_error")
	status, answer := s.ask(map[string]any{"job": "bad/job", "port": w.port, "pid": w.pid})
	if status != http.StatusBadRequest || e.num("status") != float64(status) || e["retryable"] != false ||
		e["field"] != answer["field"] || e["error"] != answer["error"] {
		s.t.Fatalf("refused request: the client reported %v; the agent answers %d %v", e, status, answer)
	}
	var after value
	if !s.value(w.key, &after) || !after.equal(v) {
		s.t.Fatalf("after a refused request %s = %+v, want it unchanged: %+v", w.key, after, v)
	}
}

// stops stops w: it must wait for a scrape of its own path that carries
// every count, then deregister, then close its endpoint.
func (s *scenario) stops(w *worker) {
	s.t.Helper()
	w.p.send("inc 2")
	w.p.next("inc")
	w.p.send("stop")
	var after value
	if !s.value(w.key, &after) {
		s.t.Fatalf("%s is gone before any scrape after stop: stop must wait for the final scrape", w.key)
	}
	// WORKERSD_FINAL_SCRAPE_TIMEOUT is 60 s: a stop that returns sooner
	// returned for a scrape of the own path that began after it.
	if seen := s.scrapeUntilStopped(w.p, w.addr, w.path); seen != 7 {
		s.t.Fatalf("scrapes during stop saw scenario_events_total = %v, want 7 (every count)", seen)
	}
	if s.value(w.key, &after) {
		s.t.Fatalf("%s is still in etcd after stop returned: %+v", w.key, after)
	}
	if status, answer := s.list(); status != http.StatusOK || answer["workers"] == nil || len(answer["workers"].([]any)) != 0 {
		s.t.Fatalf("after stop the agent lists %d %v, want no worker", status, answer)
	}
	if c, err := net.DialTimeout("tcp", w.addr, time.Second); err == nil {
		c.Close()
		s.t.Fatalf("%s still accepts connections after stop returned", w.addr)
	}
}

const (
	scenarioJob       = "scenario"
	scenarioPrefix    = "/workersd-scenario/"
	openMetricsAccept = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
	textAccept        = "text/plain;version=0.0.4"
	// unreachableLog begins what a Worker logs at its first retryable
	// failure (docs/CLIENTS.md).
	unreachableLog = "workersd: agent unreachable"
)

type scenario struct {
	t    *testing.T
	d    Driver
	cli  *clientv3.Client
	dir  string
	sock string
}

// value is a registration's value as docs/KEYS.md documents it; a field
// it does not document fails the decoding.
type value struct {
	Address     string            `json:"address"`
	Scheme      string            `json:"scheme"`
	MetricsPath string            `json:"metrics_path"`
	PID         int               `json:"pid"`
	StartedAt   string            `json:"started_at"`
	Labels      map[string]string `json:"labels"`
}

func (v value) equal(w value) bool {
	return v.Address == w.Address && v.Scheme == w.Scheme && v.MetricsPath == w.MetricsPath &&
		v.PID == w.PID && v.StartedAt == w.StartedAt && maps.Equal(v.Labels, w.Labels)
}

// value reads key into v; false if it is absent.
func (s *scenario) value(key string, v *value) bool {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := s.cli.Get(ctx, key)
	if err != nil {
		s.t.Fatalf("etcd get %s: %v", key, err)
	}
	if len(resp.Kvs) == 0 {
		return false
	}
	dec := json.NewDecoder(bytes.NewReader(resp.Kvs[0].Value))
	dec.DisallowUnknownFields()
	*v = value{}
	if err := dec.Decode(v); err != nil {
		s.t.Fatalf("%s = %s: not a documented value: %v", key, resp.Kvs[0].Value, err)
	}
	return true
}

// configError runs the driver with env and expects it to refuse its
// configuration with an error that names every one of want.
func (s *scenario) configError(env []string, want ...string) {
	s.t.Helper()
	p := s.start(env)
	e := p.next("config_error")
	for _, w := range want {
		if !strings.Contains(e.str("error"), w) {
			s.t.Fatalf("with %q the error is %q, want it to name %q", env, e.str("error"), w)
		}
	}
	if code := p.wait(); code != 2 {
		s.t.Fatalf("with %q the driver exited %d, want 2\n%s", env, code, p.stderr.String())
	}
}

// total scrapes path at addr in the text format and returns
// scenario_events_total.
func (s *scenario) total(addr, path string) float64 {
	s.t.Helper()
	code, _, body := get(s.t, addr, path, textAccept)
	m := regexp.MustCompile(`(?m)^scenario_events_total(?:\{\})? ([0-9.e+]+)$`).FindStringSubmatch(body)
	if code != http.StatusOK || m == nil {
		s.t.Fatalf("GET %s%s: %d\n%s\nwant scenario_events_total", addr, path, code, body)
	}
	f, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		s.t.Fatal(err)
	}
	return f
}

// scrapeUntilStopped scrapes path at addr, as Prometheus would, until the
// driver reports its stop done, and returns the last value of
// scenario_events_total a scrape saw (-1: none succeeded).
func (s *scenario) scrapeUntilStopped(p *driverProc, addr, path string) float64 {
	s.t.Helper()
	seen := -1.0
	client := &http.Client{Timeout: 5 * time.Second}
	deadline := time.After(scenarioTimeout)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case ev, ok := <-p.events:
			if !ok || ev["event"] != "stopped" {
				s.t.Fatalf("waiting for stopped, got %v (open %v)\n%s", ev, ok, p.stderr.String())
			}
			return seen
		case <-deadline:
			s.t.Fatalf("stop did not return within %s of scrapes of %s%s\n%s", scenarioTimeout, addr, path, p.stderr.String())
		case <-tick.C:
			// Fails once the endpoint closed, just before stopped arrives.
			req, _ := http.NewRequest(http.MethodGet, "http://"+addr+path, nil)
			req.Header.Set("Accept", textAccept)
			resp, err := client.Do(req)
			if err != nil {
				continue
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if m := regexp.MustCompile(`(?m)^scenario_events_total(?:\{\})? ([0-9.e+]+)$`).FindSubmatch(b); m != nil {
				seen, _ = strconv.ParseFloat(string(m[1]), 64)
			}
		}
	}
}

// ask sends a registration to the agent itself and returns its answer.
func (s *scenario) ask(body map[string]any) (int, map[string]any) {
	b, _ := json.Marshal(body)
	return s.agentCall(http.MethodPost, "/v1/workers", bytes.NewReader(b))
}

func (s *scenario) list() (int, map[string]any) {
	return s.agentCall(http.MethodGet, "/v1/workers", nil)
}

func (s *scenario) agentCall(method, path string, body io.Reader) (int, map[string]any) {
	s.t.Helper()
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", s.sock)
		},
	}}
	req, _ := http.NewRequest(method, "http://agent"+path, body)
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.Do(req)
	if err != nil {
		s.t.Fatalf("%s %s on the agent: %v", method, path, err)
	}
	defer resp.Body.Close()
	var answer map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&answer); err != nil {
		s.t.Fatalf("%s %s on the agent: %d, not JSON: %v", method, path, resp.StatusCode, err)
	}
	return resp.StatusCode, answer
}

func get(t *testing.T, addr, path, accept string) (code int, contentType, body string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, "http://"+addr+path, nil)
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		t.Fatalf("GET %s%s: %v", addr, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s%s: %v", addr, path, err)
	}
	return resp.StatusCode, resp.Header.Get("Content-Type"), string(b)
}

// event is one line the driver wrote.
type event map[string]any

func (e event) str(k string) string { s, _ := e[k].(string); return s }
func (e event) num(k string) float64 {
	f, _ := e[k].(float64)
	return f
}

// driverProc is a running driver; the test's cleanup kills its process
// group and waits for it and its reader.
type driverProc struct {
	t      *testing.T
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	events chan event
	stderr *logtest.Buffer
	waited chan struct{}
	code   int
}

// start runs the driver with env added to the scenario's environment.
func (s *scenario) start(env []string) *driverProc {
	s.t.Helper()
	cmd := exec.Command(s.d.Args[0], s.d.Args[1:]...)
	cmd.Dir = s.d.Dir
	cmd.Env = append(cmd.Environ(), s.d.Env...)
	cmd.Env = append(cmd.Env, "WORKERSD_AGENT_SOCKET="+s.sock, "WORKERSD_METRICS_HOST=127.0.0.1",
		"WORKERSD_FINAL_SCRAPE_TIMEOUT=60")
	cmd.Env = append(cmd.Env, env...)
	cmd.SysProcAttr = procgroup.Attr()
	p := &driverProc{t: s.t, cmd: cmd, events: make(chan event, 16), stderr: &logtest.Buffer{}, waited: make(chan struct{})}
	cmd.Stderr = p.stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		s.t.Fatal(err)
	}
	if p.stdin, err = cmd.StdinPipe(); err != nil {
		s.t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		s.t.Fatalf("start %v: %v", s.d.Args, err)
	}
	// Owned by p: it ends at the driver's stdout's end, which the cleanup's
	// kill brings at the latest; Wait runs after it, as StdoutPipe wants.
	go func() {
		defer close(p.waited)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			var e event
			if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
				e = event{"event": "garbage", "line": sc.Text()}
			}
			p.events <- e
		}
		close(p.events)
		cmd.Wait()
		p.code = cmd.ProcessState.ExitCode()
	}()
	s.t.Cleanup(func() {
		procgroup.Kill(cmd.Process)
		for range p.events {
		}
		<-p.waited
		if s.t.Failed() {
			s.t.Logf("driver %v stderr:\n%s", s.d.Args, p.stderr.String())
		}
	})
	return p
}

func (p *driverProc) send(format string, args ...any) {
	p.t.Helper()
	if _, err := fmt.Fprintf(p.stdin, format+"\n", args...); err != nil {
		p.t.Fatalf("writing to the driver: %v\n%s", err, p.stderr.String())
	}
}

// next waits for the driver's next event and fails the test unless it is
// name.
func (p *driverProc) next(name string) event {
	p.t.Helper()
	select {
	case e, ok := <-p.events:
		if !ok {
			p.t.Fatalf("the driver ended before %s\n%s", name, p.stderr.String())
		}
		if e["event"] != name {
			p.t.Fatalf("the driver wrote %v, want %s\n%s", e, name, p.stderr.String())
		}
		return e
	case <-time.After(scenarioTimeout):
		p.t.Fatalf("no %s from the driver within %s\n%s", name, scenarioTimeout, p.stderr.String())
	}
	return nil
}

// wait waits for the driver to exit and returns its status.
func (p *driverProc) wait() int {
	p.t.Helper()
	timeout := time.After(scenarioTimeout)
	for {
		select {
		case e, ok := <-p.events:
			if ok {
				p.t.Errorf("the driver wrote %v after its last event", e)
				continue
			}
			select {
			case <-p.waited:
				return p.code
			case <-timeout:
			}
		case <-timeout:
		}
		p.t.Fatalf("the driver did not exit within %s\n%s", scenarioTimeout, p.stderr.String())
	}
}

// end closes the driver's stdin, which ends it, and expects status 0.
func (p *driverProc) end() {
	p.t.Helper()
	p.stdin.Close()
	if code := p.wait(); code != 0 {
		p.t.Fatalf("the driver exited %d at the end of its input, want 0\n%s", code, p.stderr.String())
	}
}
