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

	"github.com/workersd/workersd/internal/testing/buildtest"
	"github.com/workersd/workersd/internal/testing/etcdtest"
	"github.com/workersd/workersd/internal/testing/poll"
	"github.com/workersd/workersd/internal/testing/promtest"
	"github.com/workersd/workersd/internal/testing/servertest"
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

// Real gunicorn, 4 workers recycling through max_requests, registered
// through the agent, discovered by sdwriter, scraped by Prometheus 3 with
// created-timestamp-zero-ingestion (the recommended setup), with and
// without preload_app: the request counter and the per-status counter are
// exact in Prometheus' raw samples and within 2 % in sum(increase) over the
// run, through at least 20 worker lifetimes; the instances stay within the
// bound the slot hold states; a worker killed with SIGKILL leaves the
// targets file within 1s and its replacement takes a slot of its own.
func TestGunicornExactTotals(t *testing.T) {
	env := requireGunicorn(t)
	for _, preload := range []bool{false, true} {
		name := "fork"
		if preload {
			name = "preload_app"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			r := env.run(t, gunicornRun{prom: env.prom3, promFlags: []string{"--enable-feature=created-timestamp-zero-ingestion"}, preload: preload, check: true})
			for _, f := range []figures{r.requests, r.responses, r.notFound} {
				if f.raw != f.truth {
					t.Errorf("%s: reset-aware total of the raw samples %v, want exactly %v", f.sel, f.raw, f.truth)
				}
				if math.Abs(f.inc-f.truth) > 0.02*f.truth {
					t.Errorf("%s: sum(increase) over the run %v, want %v within 2 %%", f.sel, f.inc, f.truth)
				}
			}
			if r.lifetimes < 20 {
				t.Errorf("%d worker lifetimes: want at least 20 through max_requests", r.lifetimes)
			}
		})
	}
}

// TestGunicornMatrix runs the same gunicorn scenario with workersd on
// Prometheus 3 (recommended) and on Debian's 2.42, and with Python's
// multiprocess mode (one shared /metrics on the application's port), and
// writes the table of docs/RESTARTS.md to $WORKERSD_GUNICORN_MATRIX.
// scripts/bench restarts runs it; CI does not.
func TestGunicornMatrix(t *testing.T) {
	out := os.Getenv("WORKERSD_GUNICORN_MATRIX")
	if out == "" {
		t.Skip("set WORKERSD_GUNICORN_MATRIX=<file> (scripts/bench restarts) to measure the matrix")
	}
	env := requireGunicorn(t)
	prom2 := buildtest.RequireTool(t, "prometheus", "apt-get install prometheus")
	ct := []string{"--enable-feature=created-timestamp-zero-ingestion"}
	runs := []struct {
		name string
		run  gunicornRun
	}{
		{"workersd, Prometheus 3.15 created-timestamp-zero-ingestion", gunicornRun{prom: env.prom3, promFlags: ct}},
		{"workersd, Prometheus 3.15 created-timestamp-zero-ingestion, preload_app", gunicornRun{prom: env.prom3, promFlags: ct, preload: true}},
		{"workersd, Prometheus 2.42 (Debian)", gunicornRun{prom: prom2}},
		{"Python multiprocess mode, Prometheus 3.15", gunicornRun{prom: env.prom3, promFlags: ct, multiproc: true}},
	}
	rows := make([]string, len(runs))
	t.Run("runs", func(t *testing.T) {
		for i, c := range runs {
			t.Run(c.name, func(t *testing.T) {
				t.Parallel()
				r := env.run(t, c.run)
				rows[i] = fmt.Sprintf("| %s | %d | %s | %s |", c.name, r.lifetimes, cell(r.requests), cell(r.notFound))
			})
		}
	})
	table := "| setup | worker lifetimes | requests | 404 responses (per-status counter) |\n|---|---|---|---|\n" + strings.Join(rows, "\n") + "\n"
	if err := os.WriteFile(out, []byte(table), 0o644); err != nil {
		t.Fatal(err)
	}
}

// cell renders figures for a matrix: exact (or not) from raw samples, and
// increase's deviation.
func cell(f figures) string {
	mark := "exact"
	if f.raw != f.truth {
		mark = fmt.Sprintf("**%.0f of %.0f**", f.raw, f.truth)
	}
	return fmt.Sprintf("raw: %s; increase %+.1f %%", mark, 100*(f.inc-f.truth)/f.truth)
}

// gunicornEnv is what every run needs: gunicorn, Prometheus 3, the
// workersd binaries.
type gunicornEnv struct{ gunicorn, prom3, bin string }

func requireGunicorn(t *testing.T) gunicornEnv {
	t.Helper()
	if testing.Short() {
		t.Skip("end-to-end; skipped with -short")
	}
	env := gunicornEnv{
		gunicorn: buildtest.RequireTool(t, "gunicorn", "apt-get install gunicorn"),
		prom3:    buildtest.RequirePrometheus3(t),
		bin:      filepath.Join(t.TempDir(), "bin"),
	}
	if out, err := exec.Command(interpreter(t, env.gunicorn), "-c", "import prometheus_client").CombinedOutput(); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("python3-prometheus-client is missing: %v %s", err, out)
		}
		t.Skipf("python3-prometheus-client is missing: %s", out)
	}
	if err := buildtest.Build(env.bin, "./cmd/workersd-agent", "./cmd/sdwriter"); err != nil {
		t.Fatal(err)
	}
	return env
}

// gunicornRun is one setup of the scenario.
type gunicornRun struct {
	prom      string   // Prometheus binary
	promFlags []string // its flags
	preload   bool     // gunicorn's preload_app
	multiproc bool     // Python's multiprocess mode instead of workersd
	// check asserts what workersd guarantees on the recommended setup
	// besides the totals: the targets file never holds more targets than
	// workers, the instances stay within the bound, a kill -9 leaves the
	// file within 1s and its replacement takes a slot of its own, and every
	// counter starts with its worker.
	check bool
}

// figures: a selector, the truth, the reset-aware total of its raw samples
// and sum(increase) over the run.
type figures struct {
	sel             string
	truth, raw, inc float64
}

type gunicornResult struct {
	requests, responses, notFound figures
	lifetimes                     int
	missedFinal                   int // workers that exited before any scrape reached them
}

func (env gunicornEnv) run(t *testing.T, c gunicornRun) gunicornResult {
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
	bind := etcdtest.FreeAddr(t)
	gunicornEnv := []string{
		"GUNICORN_BIND=" + bind,
		"GUNICORN_WORKERS=" + strconv.Itoa(numWorkers),
		"GUNICORN_MAX_REQUESTS=" + strconv.Itoa(maxRequests),
		"WORKERSD_JOB=" + job,
	}
	if c.preload {
		gunicornEnv = append(gunicornEnv, "GUNICORN_PRELOAD=1")
	}
	targets := filepath.Join(dir, "targets.json")
	var sdwriterURL string
	sd := `    file_sd_configs:
      - files: ["` + targets + `"]
        refresh_interval: 1s
`
	if c.multiproc {
		// One target, gunicorn's own port: any worker answers for all,
		// from the files every worker ever wrote.
		mp := filepath.Join(dir, "multiproc")
		if err := os.Mkdir(mp, 0o755); err != nil {
			t.Fatal(err)
		}
		gunicornEnv = append(gunicornEnv, "PROMETHEUS_MULTIPROC_DIR="+mp)
		sd = `    static_configs:
      - targets: ["` + bind + `"]
        labels: {job: "` + job + `"}
`
	} else {
		etcd := etcdtest.Start(t)
		sock := filepath.Join(dir, "agent.sock")
		servertest.Run(t, dir, "agent", nil, filepath.Join(env.bin, "workersd-agent"),
			"--etcd.endpoints="+etcd.Endpoint(), "--host=test-host", "--ttl="+agentTTL.String(),
			"--slot-hold="+slotHold.String(),
			"--listen.socket="+sock, "--state.file="+filepath.Join(dir, "agent.json"), "--log.level=debug")
		sdwAddr := etcdtest.FreeAddr(t)
		sdwriterURL = "http://" + sdwAddr
		servertest.Run(t, dir, "sdwriter", nil, filepath.Join(env.bin, "sdwriter"),
			"--etcd.endpoints="+etcd.Endpoint(), "--output.file="+targets,
			"--web.listen-address="+sdwAddr)
		gunicornEnv = append(gunicornEnv, "WORKERSD_METRICS_HOST=127.0.0.1", "WORKERSD_AGENT_SOCKET="+sock)
	}

	promAddr := etcdtest.FreeAddr(t)
	promCfg := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(promCfg, []byte(`global:
  scrape_interval: 200ms
  evaluation_interval: 1s
scrape_configs:
  - job_name: workersd
`+sd), 0o644); err != nil {
		t.Fatal(err)
	}
	servertest.Run(t, dir, "prometheus", nil, c.prom, append([]string{"--config.file=" + promCfg,
		"--storage.tsdb.path=" + filepath.Join(dir, "tsdb"), "--web.listen-address=" + promAddr}, c.promFlags...)...)
	promURL := "http://" + promAddr
	poll.Until(t, 60*time.Second, func() bool {
		resp, err := http.Get(promURL + "/-/ready")
		if err == nil {
			resp.Body.Close()
		}
		return err == nil && resp.StatusCode == 200
	}, "Prometheus not ready")

	began := time.Now()
	servertest.Run(t, dir, "gunicorn", gunicornEnv, env.gunicorn, "--config", "gunicorn.conf.py", "app:app")
	if c.multiproc {
		poll.Until(t, 30*time.Second, func() bool {
			resp, err := http.Get("http://" + bind + "/metrics")
			if err == nil {
				resp.Body.Close()
			}
			return err == nil && resp.StatusCode == 200
		}, "gunicorn does not serve /metrics")
	} else {
		poll.Until(t, 30*time.Second, func() bool { return len(servertest.ReadTargets(t, targets)) == numWorkers },
			"%d workers not in the targets file", numWorkers)
	}

	// Watch the file during the whole run: never more targets than
	// workers, and when each worker's registration ended (for the bound).
	stopWatch := make(chan struct{})
	var watchWG sync.WaitGroup
	var watchErr error
	instances := map[string]bool{}
	var ends []time.Time
	if !c.multiproc {
		watchWG.Go(func() {
			live := map[int]bool{}
			for {
				select {
				case <-stopWatch:
					return
				case <-time.After(20 * time.Millisecond):
				}
				b, err := os.ReadFile(targets)
				var ts []servertest.Target
				if err != nil || json.Unmarshal(b, &ts) != nil {
					continue
				}
				if len(ts) > numWorkers && watchErr == nil {
					watchErr = fmt.Errorf("%d targets in the file: %s", len(ts), b)
				}
				now := map[int]bool{}
				for _, tg := range ts {
					instances[tg.Labels["instance"]] = true
					now[tg.Pid()] = true
				}
				for pid := range live {
					if !now[pid] {
						ends = append(ends, time.Now())
					}
				}
				live = now
			}
		})
	}

	ok, notFound := servertest.DriveRequests(t, bind, requests, requestEvery)
	t.Logf("%d requests (%d 200, %d 404) in %s", requests, ok, notFound, time.Since(began).Round(time.Second))

	// Every count of the live workers reaches Prometheus at its next
	// scrape: wait until Prometheus scrapes every current target (each
	// worker in the targets file, or multiprocess mode's one) after the
	// last request.
	lastRequest := time.Now()
	poll.Until(t, 40*time.Second, func() bool {
		want := 1
		if !c.multiproc {
			want = len(servertest.ReadTargets(t, targets))
		}
		ss, err := promtest.RawSamples(promURL, fmt.Sprintf(`up{job=%q}`, job), time.Now().Add(-2*time.Second), time.Now())
		if err != nil || len(ss) != want {
			return false
		}
		for _, s := range ss {
			if last := s.Samples[len(s.Samples)-1]; last.T < float64(lastRequest.UnixNano())/1e9+0.5 || last.V != 1 {
				return false
			}
		}
		return true
	}, "Prometheus did not scrape every worker after the last request")

	if c.check {
		checkKillAndCreated(t, targets, sdwriterURL, began)
	}
	close(stopWatch)
	watchWG.Wait()
	end := time.Now()

	r := gunicornResult{
		lifetimes: strings.Count(readLog(t, filepath.Join(dir, "gunicorn.log")), "Booting worker with pid"),
		requests:  figures{sel: fmt.Sprintf(`app_requests_total{job=%q}`, job), truth: requests},
		responses: figures{sel: fmt.Sprintf(`app_responses_total{job=%q}`, job), truth: requests},
		notFound:  figures{sel: fmt.Sprintf(`app_responses_total{job=%q,code="404"}`, job), truth: float64(notFound)},
	}
	for _, f := range []*figures{&r.requests, &r.responses, &r.notFound} {
		var err error
		if f.raw, f.inc, err = promtest.Totals(promURL, f.sel, began.Add(-5*time.Second), end); err != nil {
			t.Fatal(err)
		}
		t.Logf("%-52s truth %4.0f  raw samples %6.0f  sum(increase) %8.2f (%+.2f %%)", f.sel, f.truth, f.raw, f.inc, 100*(f.inc-f.truth)/f.truth)
	}
	log := readLog(t, filepath.Join(dir, "gunicorn.log"))
	r.missedFinal = strings.Count(log, "no final scrape within")
	t.Logf("%d worker lifetimes on %d instances; %d workers exited without a final scrape", r.lifetimes, len(instances), r.missedFinal)
	if r.requests.raw != r.requests.truth {
		servertest.LogSeries(t, promURL, r.requests.sel, began.Add(-5*time.Second), end)
	}

	if c.check {
		if watchErr != nil {
			t.Error(watchErr)
		}
		if bound := registrar.MaxSlots(numWorkers, ends, agentTTL, slotHold); len(instances) > bound {
			t.Errorf("%d instances in the targets file, above the stated bound %d", len(instances), bound)
		}
		if log := readLog(t, filepath.Join(dir, "gunicorn.log")); strings.Contains(log, "workersd: registration of pid") || strings.Contains(log, "workersd: agent unreachable") {
			t.Error("a worker failed to register at once; see the gunicorn log")
		}
	}
	return r
}

// checkKillAndCreated kills one worker with SIGKILL (once every count is
// scraped, so its truth is known): no worker_exit hook runs; the agent sees
// the process end and revokes, sdwriter rewrites the file within 1s,
// gunicorn starts a replacement, which takes a slot of its own while the
// victim's is held. Then every counter of a live, recycled worker must have
// started with the worker, not before (preload_app creates them in the
// master): otherwise Prometheus drops the zero sample of its created
// timestamp on a reused slot.
func checkKillAndCreated(t *testing.T, targets, sdwriterURL string, began time.Time) {
	t.Helper()
	victim := servertest.ReadTargets(t, targets)[0]
	pid := victim.Pid()
	if pid == 0 {
		t.Fatalf("no pid in the metrics path of %+v", victim)
	}
	killed := time.Now()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, time.Second, func() bool {
		for _, tg := range servertest.ReadTargets(t, targets) {
			if tg.Pid() == pid {
				return false
			}
		}
		return true
	}, "worker %d still in the targets file 1s after kill -9", pid)
	t.Logf("kill -9 of worker %d: gone from the targets file after %s (polled every %s)", pid, time.Since(killed), poll.Interval)
	poll.Until(t, 20*time.Second, func() bool { return len(servertest.ReadTargets(t, targets)) == numWorkers },
		"no replacement for the killed worker")
	for _, tg := range servertest.ReadTargets(t, targets) {
		if tg.Labels["instance"] == victim.Labels["instance"] {
			t.Errorf("the replacement took the killed worker's instance %s while it was held", victim.Labels["instance"])
		}
	}

	checked := 0
	startedAt := servertest.Started(t, sdwriterURL)
	for _, tg := range servertest.ReadTargets(t, targets) {
		started, ok := startedAt[tg.Targets[0]]
		if !ok {
			t.Fatalf("sdwriter's status has no start for %+v", tg)
		}
		if started.Before(began.Add(2 * time.Second)) {
			continue // forked in the same second as the master imported the app
		}
		// A worker registers in post_fork, before gunicorn imports the
		// app into it (without preload_app): its app metrics may not
		// exist yet for a moment.
		var ts map[string]float64
		var body string
		poll.Until(t, 10*time.Second, func() bool {
			ts, body = createdTimestamps(t, tg.Targets[0])
			return len(ts) > 0
		}, "%s: no created timestamps in:\n%s", tg.Targets[0], poll.Latest(&body))
		for name, created := range ts {
			checked++
			if created < float64(started.Unix()) {
				t.Errorf("worker %d (started %s): %s = %s, before the worker started",
					tg.Pid(), started, name, time.Unix(int64(created), 0).UTC())
			}
		}
	}
	if checked == 0 {
		t.Error("no created timestamp of a recycled worker was checked")
	}
}

// createdTimestamps reads the app's counters' created timestamps from a
// worker's OpenMetrics exposition, by series, and the exposition.
func createdTimestamps(t *testing.T, addr string) (map[string]float64, string) {
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
	return out, string(b)
}

func readLog(t *testing.T, path string) string {
	b, _ := os.ReadFile(path)
	return string(b)
}

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
