package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/workersd/workersd/registrar"
	"github.com/workersd/workersd/worker"
)

// ScrapePoint is the scrape cost after a number of worker lifetimes.
type ScrapePoint struct {
	Lifetimes int `json:"lifetimes"`
	// Python multiprocess mode: one scrape of the aggregate (in-process,
	// no HTTP), sorted ms; the .db files read and the exposition size.
	PythonMs    []float64 `json:"python_ms"`
	PythonFiles int       `json:"python_files"`
	PythonBytes int       `json:"python_bytes"`
	// workersd: median ms of one worker's scrape over HTTP, and of the sum
	// over every live worker (what Prometheus pays per interval).
	OneMs   float64 `json:"one_ms"`
	AllMs   float64 `json:"all_ms"`
	Live    int     `json:"live"`
	Targets int     `json:"targets"`  // registrations in etcd at that moment
	MaxSlot int     `json:"max_slot"` // highest slot ever claimed (bounds the series)
	Bytes   int     `json:"bytes"`
}

type ScrapeResult struct {
	Points  []ScrapePoint `json:"points"`
	Scrapes int           `json:"scrapes"`
	Rounds  int           `json:"rounds"`
	Python  string        `json:"python"`
}

var checkpoints = []int{8, 64, 256, 1024}

const liveWorkers = 8

// runScrape measures comparison 1: Python's multiprocess scrape against
// workersd workers living and dying the same number of times.
func runScrape(ctx context.Context, etcd *etcdMember, tmp, python, script string, log func(string, ...any)) (*ScrapeResult, error) {
	res := &ScrapeResult{Scrapes: 5, Rounds: 50}
	py, err := runPython(ctx, tmp, python, script, res.Scrapes)
	if err != nil {
		return nil, err
	}
	res.Python = python
	log("python multiprocess: %d checkpoints", len(py))

	cli, err := etcd.Client()
	if err != nil {
		return nil, err
	}
	defer cli.Close()
	prefix := "/workersd/scrape/"
	var live []*worker.Worker
	defer func() {
		for _, w := range live {
			w.Stop(context.Background())
		}
	}()
	lived, maxSlot := 0, 0
	httpc := &http.Client{Timeout: 10 * time.Second}
	for i, cp := range checkpoints {
		for lived < cp {
			if len(live) == liveWorkers {
				// The oldest worker exits gracefully (its lease is revoked).
				if err := live[0].Stop(ctx); err != nil {
					return nil, err
				}
				live = live[1:]
			}
			w, err := startAppWorker(ctx, cli, prefix, lived)
			if err != nil {
				return nil, err
			}
			live = append(live, w)
			maxSlot = max(maxSlot, w.Registration().Slot)
			lived++
		}
		resp, err := cli.Get(ctx, prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err != nil {
			return nil, err
		}
		p := ScrapePoint{Lifetimes: cp, Live: len(live), Targets: int(resp.Count), MaxSlot: maxSlot}
		for _, pp := range py {
			if pp.Lifetimes == cp {
				p.PythonMs, p.PythonFiles, p.PythonBytes = pp.ScrapeSeconds, pp.Files, pp.Bytes
				for j := range p.PythonMs {
					p.PythonMs[j] *= 1000
				}
			}
		}
		var one, all []float64
		for range res.Rounds {
			sum := 0.0
			for _, w := range live {
				d, n, err := scrape(httpc, "http://"+w.Addr()+worker.MetricsPath)
				if err != nil {
					return nil, err
				}
				one = append(one, d)
				sum += d
				p.Bytes = n
			}
			all = append(all, sum)
		}
		p.OneMs, p.AllMs = median(one), median(all)
		res.Points = append(res.Points, p)
		log("scrape after %d lifetimes: python p50 %.1f ms, workersd one %.2f ms, all %d live %.2f ms (%d/%d)",
			cp, median(p.PythonMs), p.OneMs, len(live), p.AllMs, i+1, len(checkpoints))
	}
	return res, nil
}

// appMetrics are the metrics every worker of the comparison has, the same
// as the Python script's: a counter with 60 series, a histogram with 20.
func appMetrics(reg prometheus.Registerer, n int) {
	requests := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "app_requests_total", Help: "Requests."}, []string{"route", "code"})
	duration := prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "app_request_duration_seconds", Help: "Request duration."}, []string{"route"})
	reg.MustRegister(requests, duration)
	for r := range 20 {
		route := "/route/" + strconv.Itoa(r)
		for _, code := range []string{"200", "404", "500"} {
			requests.WithLabelValues(route, code).Add(float64(n%7 + 1))
		}
		duration.WithLabelValues(route).Observe(0.001 * float64(n%50+1))
	}
}

func startAppWorker(ctx context.Context, cli *clientv3.Client, prefix string, n int) (*worker.Worker, error) {
	w, err := worker.Start(ctx, worker.Config{
		Job: "app", Host: "bench", EtcdClient: cli, Prefix: prefix,
		ListenAddress: "127.0.0.1:0", FinalScrapeTimeout: new(time.Duration(0)),
		Logger: hclog.NewNullLogger(),
	})
	if err != nil {
		return nil, err
	}
	appMetrics(w.Registry(), n)
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := w.WaitRegistered(wctx); err != nil {
		w.Stop(context.Background())
		return nil, fmt.Errorf("worker %d not registered: %w", n, err)
	}
	return w, nil
}

// scrape GETs url as Prometheus does (text format) and returns ms and size.
func scrape(c *http.Client, url string) (float64, int, error) {
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	req.Header.Set("Accept", "text/plain;version=0.0.4")
	t0 := time.Now()
	resp, err := c.Do(req)
	if err != nil {
		return 0, 0, err
	}
	n, err := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	d := time.Since(t0)
	if err != nil || resp.StatusCode != http.StatusOK {
		return 0, 0, fmt.Errorf("scrape %s: %s %v", url, resp.Status, err)
	}
	return ms(d), int(n), nil
}

type pyPoint struct {
	Lifetimes     int       `json:"lifetimes"`
	Files         int       `json:"files"`
	Bytes         int       `json:"bytes"`
	ScrapeSeconds []float64 `json:"scrape_seconds"`
}

func runPython(ctx context.Context, tmp, python, script string, scrapes int) ([]pyPoint, error) {
	dir := filepath.Join(tmp, "multiproc")
	os.RemoveAll(dir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	args := []string{script, dir, strconv.Itoa(scrapes)}
	for _, c := range checkpoints {
		args = append(args, strconv.Itoa(c))
	}
	cmd := exec.CommandContext(ctx, python, args...)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("%s: %w", python, err)
	}
	var pts []pyPoint
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		var p pyPoint
		if err := json.Unmarshal(sc.Bytes(), &p); err != nil {
			return nil, fmt.Errorf("python printed %q: %w", sc.Text(), err)
		}
		pts = append(pts, p)
	}
	if err := cmd.Wait(); err != nil {
		return nil, fmt.Errorf("python multiprocess script: %w", err)
	}
	if len(pts) != len(checkpoints) {
		return nil, fmt.Errorf("python: %d checkpoints, want %d", len(pts), len(checkpoints))
	}
	return pts, nil
}

var _ = registrar.DefaultPrefix
