//go:build linux

package gunicorn

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
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
)

const (
	job        = "gunicorn"
	numWorkers = 4
	requests   = 600
	// maxRequests makes every worker recycle a few times during the test.
	maxRequests = 50
)

// requireTool finds an external program: missing, it skips the test, but
// fails it in CI, where scripts/test installs it.
func requireTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s is not on PATH; scripts/test installs it (apt-get install gunicorn python3-prometheus-client prometheus)", name)
		}
		t.Skipf("%s is not on PATH; skipping", name)
	}
	return p
}

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

func promScalar(t *testing.T, promURL, q string) (float64, bool) {
	t.Helper()
	resp, err := http.Get(promURL + "/api/v1/query?query=" + url.QueryEscape(q))
	if err != nil {
		return 0, false
	}
	defer resp.Body.Close()
	var r struct {
		Status string `json:"status"`
		Data   struct {
			Result []struct {
				Value []any `json:"value"`
			} `json:"result"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil || r.Status != "success" || len(r.Data.Result) != 1 {
		return 0, false
	}
	v, err := strconv.ParseFloat(r.Data.Result[0].Value[1].(string), 64)
	return v, err == nil
}

// Real gunicorn, 4 workers recycling every ~50 requests, registered through
// the agent, discovered by sdwriter, scraped by Prometheus: the request
// count in Prometheus is exact, the instances stay bounded by the worker
// count, and a worker killed with SIGKILL leaves the targets file within 1s.
func TestGunicornEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end; skipped with -short")
	}
	gunicorn := requireTool(t, "gunicorn")
	prometheus := requireTool(t, "prometheus")
	if out, err := exec.Command(interpreter(t, gunicorn), "-c", "import prometheus_client").CombinedOutput(); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("python3-prometheus-client is missing: %v %s", err, out)
		}
		t.Skipf("python3-prometheus-client is missing: %s", out)
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "bin")
	if err := buildtest.Build(bin, "./cmd/workersd-agent", "./cmd/sdwriter"); err != nil {
		t.Fatal(err)
	}

	etcd := etcdtest.Start(t)
	sock := filepath.Join(dir, "agent.sock")
	start(t, dir, "agent", nil, filepath.Join(bin, "workersd-agent"),
		"--etcd.endpoints="+etcd.Endpoint(), "--host=test-host", "--ttl=5s",
		"--listen.socket="+sock, "--state.file="+filepath.Join(dir, "agent.json"), "--log.level=debug")
	targets := filepath.Join(dir, "targets.json")
	start(t, dir, "sdwriter", nil, filepath.Join(bin, "sdwriter"),
		"--etcd.endpoints="+etcd.Endpoint(), "--output.file="+targets,
		"--web.listen-address="+etcdtest.FreeAddr(t))

	// Each worker lifetime is its own series (the pid label, copied from a
	// meta label for this test only): the sum of every series' last value
	// is then exact, where increase() over counter resets would
	// extrapolate.
	promAddr := etcdtest.FreeAddr(t)
	promCfg := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(promCfg, []byte(`global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: workersd
    scrape_interval: 1s
    file_sd_configs:
      - files: ["`+targets+`"]
        refresh_interval: 1s
    relabel_configs:
      - source_labels: [__meta_workersd_pid]
        target_label: pid
`), 0o644); err != nil {
		t.Fatal(err)
	}
	start(t, dir, "prometheus", nil, prometheus, "--config.file="+promCfg,
		"--storage.tsdb.path="+filepath.Join(dir, "tsdb"), "--web.listen-address="+promAddr)
	promURL := "http://" + promAddr

	bind := etcdtest.FreeAddr(t)
	start(t, dir, "gunicorn", []string{
		"GUNICORN_BIND=" + bind,
		"GUNICORN_WORKERS=" + strconv.Itoa(numWorkers),
		"GUNICORN_MAX_REQUESTS=" + strconv.Itoa(maxRequests),
		"WORKERSD_JOB=" + job,
		"WORKERSD_METRICS_HOST=127.0.0.1",
		"WORKERSD_AGENT_SOCKET=" + sock,
	}, gunicorn, "--config", "gunicorn.conf.py", "app:app")

	poll.Until(t, 30*time.Second, func() bool { return len(readTargets(t, targets)) == numWorkers },
		"%d workers not in the targets file", numWorkers)

	// Watch the file during the whole run: never more targets or instances
	// than workers.
	stopWatch := make(chan struct{})
	var watchWG sync.WaitGroup
	var watchErr error
	instances := map[string]bool{}
	watchWG.Add(1)
	go func() {
		defer watchWG.Done()
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
			for _, tg := range ts {
				instances[tg.Labels["instance"]] = true
			}
		}
	}()

	// Drive the requests, four at a time, each on a new connection.
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 30 * time.Second}
	var wg sync.WaitGroup
	errs := make(chan error, requests)
	next := make(chan int, requests)
	for i := range requests {
		next <- i
	}
	close(next)
	began := time.Now()
	for range numWorkers {
		wg.Go(func() {
			for range next {
				resp, err := client.Get("http://" + bind + "/")
				if err != nil {
					errs <- err
					continue
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					errs <- fmt.Errorf("status %d", resp.StatusCode)
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("request failed: %v", err)
	}
	t.Logf("%d requests in %s", requests, time.Since(began))

	sumQ := fmt.Sprintf(`sum(max_over_time(app_requests_total{job=%q}[10m]))`, job)
	var last float64
	took := poll.Until(t, 40*time.Second, func() bool {
		v, ok := promScalar(t, promURL, sumQ)
		if ok && v > requests {
			t.Fatalf("%s = %v, more than the %d requests served: double-counted", sumQ, v, requests)
		}
		last = v
		return ok && v == requests
	}, "%s = %v, want %d", sumQ, deref{&last}, requests)
	t.Logf("%s = %d, %s after the last request", sumQ, requests, took)

	lifetimes, _ := promScalar(t, promURL, fmt.Sprintf(`count(max_over_time(app_requests_total{job=%q}[10m]))`, job))
	seenInstances, _ := promScalar(t, promURL, fmt.Sprintf(`count(count by (instance) (max_over_time(app_requests_total{job=%q}[10m])))`, job))
	t.Logf("%v worker lifetimes on %v instances", lifetimes, seenInstances)
	if lifetimes <= numWorkers {
		t.Errorf("%v worker lifetimes: the workers did not recycle, the test proves nothing", lifetimes)
	}
	if seenInstances < 1 || seenInstances > numWorkers {
		t.Errorf("%v instance values in Prometheus, want at most %d", seenInstances, numWorkers)
	}

	// kill -9 one worker: no worker_exit hook runs; the agent sees the
	// process end and revokes, sdwriter rewrites the file.
	ts := readTargets(t, targets)
	victim := ts[0]
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
	// gunicorn replaces it, in the freed slot.
	poll.Until(t, 20*time.Second, func() bool {
		ts := readTargets(t, targets)
		for _, tg := range ts {
			if tg.Labels["instance"] == victim.Labels["instance"] && tg.Labels["__meta_workersd_pid"] != victim.Labels["__meta_workersd_pid"] {
				return len(ts) == numWorkers
			}
		}
		return false
	}, "the replacement worker did not take instance %s", victim.Labels["instance"])

	close(stopWatch)
	watchWG.Wait()
	if watchErr != nil {
		t.Error(watchErr)
	}
	if len(instances) > numWorkers {
		t.Errorf("instances in the targets file: %v, want at most %d", instances, numWorkers)
	}
	if strings.Contains(readLog(t, filepath.Join(dir, "gunicorn.log")), "registration failed") {
		t.Error("a worker failed to register; see the gunicorn log")
	}
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
