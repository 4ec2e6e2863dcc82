//go:build linux

package gunicorn

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
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

	"github.com/workersd/workersd/internal/buildtest"
	"github.com/workersd/workersd/internal/etcdtest"
	"github.com/workersd/workersd/internal/poll"
	"github.com/workersd/workersd/internal/promtest"
	"github.com/workersd/workersd/registrar"
)

const (
	job        = "gunicorn"
	numWorkers = 4
	requests   = 720
	// maxRequests (with gunicorn's jitter of a fifth) makes each of the 4
	// workers recycle 5 or 6 times during the test.
	maxRequests = 30
)

// proc is a child process in its own process group, logged to a file that
// is printed if the test fails.
type proc struct {
	cmd *exec.Cmd
	log string
}

func start(t *testing.T, dir, name string, env []string, bin string, args ...string) *proc {
	t.Helper()
	logPath := filepath.Join(dir, name+".log")
	f, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	f.Close()
	p := &proc{cmd: cmd, log: logPath}
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		cmd.Wait()
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			t.Logf("--- %s log:\n%s", name, b)
		}
	})
	return p
}

type target struct {
	Targets []string          `json:"targets"`
	Labels  map[string]string `json:"labels"`
}

func readTargets(t *testing.T, path string) []target {
	t.Helper()
	b, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var ts []target
	if err := json.Unmarshal(b, &ts); err != nil {
		t.Fatalf("targets file: %v: %s", err, b)
	}
	return ts
}

// Real gunicorn, 4 workers recycling through max_requests, registered
// through the agent, discovered by sdwriter, scraped by Prometheus 3 with
// created-timestamp-zero-ingestion (the recommended setup), with and
// without preload_app: the request counter and the per-status counter are
// exact in Prometheus' raw samples and within 2 % in sum(increase) over the
// run, through at least 20 worker lifetimes; the instances stay within the
// bound the slot hold states; a worker killed with SIGKILL leaves the
// targets file within 1s and its replacement takes a slot of its own.
func TestGunicornExactTotals(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end; skipped with -short")
	}
	gunicorn := buildtest.RequireTool(t, "gunicorn", "apt-get install gunicorn")
	prometheus := buildtest.RequirePrometheus3(t)
	if out, err := exec.Command(interpreter(t, gunicorn), "-c", "import prometheus_client").CombinedOutput(); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("python3-prometheus-client is missing: %v %s", err, out)
		}
		t.Skipf("python3-prometheus-client is missing: %s", out)
	}
	bin := filepath.Join(t.TempDir(), "bin")
	if err := buildtest.Build(bin, "./cmd/workersd-agent", "./cmd/sdwriter"); err != nil {
		t.Fatal(err)
	}
	for _, preload := range []bool{false, true} {
		name := "fork"
		if preload {
			name = "preload_app"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			runGunicorn(t, bin, gunicorn, prometheus, preload)
		})
	}
}

func runGunicorn(t *testing.T, bin, gunicorn, prometheus string, preload bool) {
	const (
		agentTTL = 5 * time.Second
		slotHold = 15 * time.Second // Prometheus' ~10s discovery delay, a 200ms scrape interval, a margin
		// Each worker gets ~2 requests/s: a lifetime (~30 requests) lasts
		// ~15s, most of it scraped every 200ms, so increase's end
		// extrapolation (half a sample interval per series that ends
		// before the window does) stays near 1 %.
		requestEvery = 125 * time.Millisecond
	)
	dir := t.TempDir()
	etcd := etcdtest.Start(t)
	sock := filepath.Join(dir, "agent.sock")
	start(t, dir, "agent", nil, filepath.Join(bin, "workersd-agent"),
		"--etcd.endpoints="+etcd.Endpoint(), "--host=test-host", "--ttl="+agentTTL.String(),
		"--slot-hold="+slotHold.String(),
		"--listen.socket="+sock, "--state.file="+filepath.Join(dir, "agent.json"), "--log.level=debug")
	targets := filepath.Join(dir, "targets.json")
	start(t, dir, "sdwriter", nil, filepath.Join(bin, "sdwriter"),
		"--etcd.endpoints="+etcd.Endpoint(), "--output.file="+targets,
		"--web.listen-address="+etcdtest.FreeAddr(t))

	promAddr := etcdtest.FreeAddr(t)
	promCfg := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(promCfg, []byte(`global:
  scrape_interval: 200ms
  evaluation_interval: 1s
scrape_configs:
  - job_name: workersd
    file_sd_configs:
      - files: ["`+targets+`"]
        refresh_interval: 1s
`), 0o644); err != nil {
		t.Fatal(err)
	}
	start(t, dir, "prometheus", nil, prometheus, "--config.file="+promCfg,
		"--enable-feature=created-timestamp-zero-ingestion",
		"--storage.tsdb.path="+filepath.Join(dir, "tsdb"), "--web.listen-address="+promAddr)
	promURL := "http://" + promAddr

	preloadEnv := "0"
	if preload {
		preloadEnv = "1"
	}
	bind := etcdtest.FreeAddr(t)
	began := time.Now()
	start(t, dir, "gunicorn", []string{
		"GUNICORN_BIND=" + bind,
		"GUNICORN_WORKERS=" + strconv.Itoa(numWorkers),
		"GUNICORN_MAX_REQUESTS=" + strconv.Itoa(maxRequests),
		"GUNICORN_PRELOAD=" + preloadEnv,
		"WORKERSD_JOB=" + job,
		"WORKERSD_METRICS_HOST=127.0.0.1",
		"WORKERSD_AGENT_SOCKET=" + sock,
	}, gunicorn, "--config", "gunicorn.conf.py", "app:app")

	poll.Until(t, 30*time.Second, func() bool { return len(readTargets(t, targets)) == numWorkers },
		"%d workers not in the targets file", numWorkers)

	// Watch the file during the whole run: never more targets than
	// workers, and when each worker's registration ended (for the bound).
	stopWatch := make(chan struct{})
	var watchWG sync.WaitGroup
	var watchErr error
	instances := map[string]bool{}
	var ends []time.Time
	watchWG.Go(func() {
		live := map[string]bool{}
		for {
			select {
			case <-stopWatch:
				return
			case <-time.After(20 * time.Millisecond):
			}
			b, err := os.ReadFile(targets)
			var ts []target
			if err != nil || json.Unmarshal(b, &ts) != nil {
				continue
			}
			if len(ts) > numWorkers && watchErr == nil {
				watchErr = fmt.Errorf("%d targets in the file: %s", len(ts), b)
			}
			now := map[string]bool{}
			for _, tg := range ts {
				instances[tg.Labels["instance"]] = true
				now[tg.Labels["__meta_workersd_pid"]] = true
			}
			for pid := range live {
				if !now[pid] {
					ends = append(ends, time.Now())
				}
			}
			live = now
		}
	})

	// Drive the requests at a steady pace, each on a new connection; one
	// in five asks for a missing page (a 404, the per-status counter's
	// low-rate series).
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 30 * time.Second}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var ok, notFound int
	var reqErr error
	tick := time.NewTicker(requestEvery)
	for i := range requests {
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
	tick.Stop()
	wg.Wait()
	if reqErr != nil {
		t.Fatalf("request failed: %v", reqErr)
	}
	t.Logf("%d requests (%d 200, %d 404) in %s", requests, ok, notFound, time.Since(began).Round(time.Second))

	// Every count of the live workers reaches Prometheus at its next scrape.
	sel := fmt.Sprintf(`app_requests_total{job=%q}`, job)
	var raw float64
	poll.Until(t, 30*time.Second, func() bool {
		var err error
		raw, _, err = promtest.Totals(promURL, sel, began.Add(-5*time.Second), time.Now())
		if err == nil && raw > requests {
			t.Fatalf("%s: %v counted, more than the %d requests served: double-counted", sel, raw, requests)
		}
		return err == nil && raw == requests
	}, "%s: the raw samples never counted the %d requests", sel, requests)

	// kill -9 one worker (now that every count is scraped, its truth is
	// known): no worker_exit hook runs; the agent sees the process end and
	// revokes, sdwriter rewrites the file, gunicorn starts a replacement,
	// which takes a slot of its own while the victim's is held.
	victim := readTargets(t, targets)[0]
	pid, err := strconv.Atoi(victim.Labels["__meta_workersd_pid"])
	if err != nil {
		t.Fatalf("no pid in %+v", victim)
	}
	killed := time.Now()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, time.Second, func() bool {
		for _, tg := range readTargets(t, targets) {
			if tg.Labels["__meta_workersd_pid"] == victim.Labels["__meta_workersd_pid"] {
				return false
			}
		}
		return true
	}, "worker %d still in the targets file 1s after kill -9", pid)
	t.Logf("kill -9 of worker %d: gone from the targets file after %s (polled every %s)", pid, time.Since(killed), poll.Interval)
	poll.Until(t, 20*time.Second, func() bool { return len(readTargets(t, targets)) == numWorkers },
		"no replacement for the killed worker")
	for _, tg := range readTargets(t, targets) {
		if tg.Labels["instance"] == victim.Labels["instance"] {
			t.Errorf("the replacement took the killed worker's instance %s while it was held", victim.Labels["instance"])
		}
	}
	// Every counter of a live worker started with the worker, not before
	// (preload_app creates them in the master): otherwise Prometheus drops
	// the zero sample of its created timestamp on a reused slot.
	checked := 0
	for _, tg := range readTargets(t, targets) {
		started, err := time.Parse(time.RFC3339, tg.Labels["__meta_workersd_started_at"])
		if err != nil {
			t.Fatalf("started_at of %+v: %v", tg, err)
		}
		if started.Before(began.Add(2 * time.Second)) {
			continue // forked in the same second as the master imported the app
		}
		for name, created := range createdTimestamps(t, tg.Targets[0]) {
			checked++
			if created < float64(started.Unix()) {
				t.Errorf("worker %s (started %s): %s = %s, before the worker started",
					tg.Labels["__meta_workersd_pid"], started, name, time.Unix(int64(created), 0).UTC())
			}
		}
	}
	if checked == 0 {
		t.Error("no created timestamp of a recycled worker was checked")
	}

	close(stopWatch)
	watchWG.Wait()
	end := time.Now()
	if watchErr != nil {
		t.Error(watchErr)
	}

	lifetimes := strings.Count(readLog(t, filepath.Join(dir, "gunicorn.log")), "workersd: registered pid")
	if lifetimes < 20 {
		t.Errorf("%d worker lifetimes: want at least 20 through max_requests", lifetimes)
	}
	if bound := registrar.MaxSlots(numWorkers, ends, agentTTL, slotHold); len(instances) > bound {
		t.Errorf("%d instances in the targets file, above the stated bound %d", len(instances), bound)
	}
	t.Logf("%d worker lifetimes on %d instances", lifetimes, len(instances))

	for _, c := range []struct {
		sel   string
		truth int
	}{
		{fmt.Sprintf(`app_requests_total{job=%q}`, job), requests},
		{fmt.Sprintf(`app_responses_total{job=%q}`, job), requests},
		{fmt.Sprintf(`app_responses_total{job=%q,code="404"}`, job), notFound},
	} {
		raw, inc, err := promtest.Totals(promURL, c.sel, began.Add(-5*time.Second), end)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%-52s truth %4d  raw samples %6.0f  sum(increase) %8.2f (%+.2f %%)", c.sel, c.truth, raw, inc, 100*(inc-float64(c.truth))/float64(c.truth))
		if raw != float64(c.truth) {
			t.Errorf("%s: reset-aware total of the raw samples %v, want exactly %d", c.sel, raw, c.truth)
		}
		if math.Abs(inc-float64(c.truth)) > 0.02*float64(c.truth) {
			t.Errorf("%s: sum(increase) over the run %v, want %d within 2 %%", c.sel, inc, c.truth)
		}
	}
	if strings.Contains(readLog(t, filepath.Join(dir, "gunicorn.log")), "registration failed") {
		t.Error("a worker failed to register; see the gunicorn log")
	}
}

// createdTimestamps reads the app's counters' created timestamps from a
// worker's OpenMetrics exposition, by series.
func createdTimestamps(t *testing.T, addr string) map[string]float64 {
	t.Helper()
	req, err := http.NewRequest("GET", "http://"+addr+"/metrics", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Accept", "application/openmetrics-text; version=1.0.0")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for line := range strings.SplitSeq(string(b), "\n") {
		if !strings.HasPrefix(line, "app_") {
			continue
		}
		name, value, ok := strings.Cut(line, " ")
		if !ok || !strings.Contains(name, "_created") {
			continue
		}
		v, err := strconv.ParseFloat(value, 64)
		if err != nil {
			t.Fatalf("%s: %q: %v", addr, line, err)
		}
		out[name] = v
	}
	if len(out) == 0 {
		t.Fatalf("%s: no created timestamps in:\n%s", addr, b)
	}
	return out
}

func readLog(t *testing.T, path string) string {
	b, _ := os.ReadFile(path)
	return string(b)
}

// deref prints a value as it is when the message is formatted.
type deref struct{ p *float64 }

func (d deref) String() string { return strconv.FormatFloat(*d.p, 'g', -1, 64) }

// interpreter is the Python that runs gunicorn (its #! line): the one that
// must have prometheus_client.
func interpreter(t *testing.T, script string) string {
	b, err := os.ReadFile(script)
	if err != nil {
		t.Fatal(err)
	}
	line, _, _ := strings.Cut(string(b), "\n")
	if fields := strings.Fields(strings.TrimPrefix(line, "#!")); strings.HasPrefix(line, "#!") && len(fields) > 0 {
		if filepath.Base(fields[0]) == "env" && len(fields) > 1 {
			return fields[1]
		}
		return fields[0]
	}
	return "python3"
}
