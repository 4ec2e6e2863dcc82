package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"
)

// Results is everything one run measured; the report is rendered from it.
type Results struct {
	Date      string         `json:"date"`
	Cores     int            `json:"cores"`
	CPU       string         `json:"cpu"`
	GoVersion string         `json:"go"`
	LoadStart string         `json:"load_start"`
	LoadEnd   string         `json:"load_end"`
	Seconds   float64        `json:"seconds"`
	Quick     bool           `json:"quick"`
	Scrape    *ScrapeResult  `json:"scrape,omitempty"`
	Adapter   *AdapterResult `json:"adapter,omitempty"`
	GoKit     *GoKitResult   `json:"gokit,omitempty"`
	Own       *OwnResult     `json:"own,omitempty"`
	GoRuns    []GoRun        `json:"go_runs,omitempty"`
	Errors    []string       `json:"errors,omitempty"`
}

func main() {
	var (
		repo          = flag.String("repo", "..", "root of the workersd repository")
		docs          = flag.String("docs", "", "where BENCHMARKS.md and the plots go (default <repo>/docs)")
		python        = flag.String("python", "/usr/bin/python3", "Python with Debian's python3-prometheus-client")
		quick         = flag.Bool("quick", false, "fewer samples and shorter waits, to try the harness out (the report says so)")
		sections      = flag.String("sections", "scrape,adapter,gokit,own,gotest", "sections to run")
		goOnly        = flag.String("go-runs", "", "only these go test runs (ids, comma-separated)")
		resultsIn     = flag.String("from", "", "render the report from this results JSON instead of measuring")
		resultsOut    = flag.String("results", "", "also write the results JSON here")
		childWorkerEP = flag.String("child-worker", "", "internal: run as a worker process registered at this etcd endpoint")
		childPrefix   = flag.String("child-prefix", "", "internal: the child worker's prefix")
	)
	flag.Parse()
	if *childWorkerEP != "" {
		childWorker(*childWorkerEP, *childPrefix)
		return
	}
	if *docs == "" {
		*docs = filepath.Join(*repo, "docs")
	}
	var res *Results
	if *resultsIn != "" {
		b, err := os.ReadFile(*resultsIn)
		if err != nil {
			fatal(err)
		}
		res = &Results{}
		if err := json.Unmarshal(b, res); err != nil {
			fatal(err)
		}
	} else {
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		res = measure(ctx, *repo, *python, *quick, split(*sections), split(*goOnly))
		if *resultsOut != "" {
			b, _ := json.MarshalIndent(res, "", "  ")
			if err := os.WriteFile(*resultsOut, b, 0o644); err != nil {
				fatal(err)
			}
		}
	}
	if err := writeReport(res, *docs); err != nil {
		fatal(err)
	}
	if len(res.Errors) > 0 {
		fmt.Fprintf(os.Stderr, "bench: %d section(s) failed:\n  %s\n", len(res.Errors), strings.Join(res.Errors, "\n  "))
		os.Exit(1)
	}
}

func split(s string) map[string]bool {
	m := map[string]bool{}
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			m[f] = true
		}
	}
	return m
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "bench:", err)
	os.Exit(1)
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s bench: %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}

func measure(ctx context.Context, repo, python string, quick bool, sections, goOnly map[string]bool) *Results {
	start := time.Now()
	res := &Results{
		Date:      start.UTC().Format("2006-01-02 15:04 UTC"),
		Cores:     runtime.NumCPU(),
		CPU:       cpuModel(),
		GoVersion: runtime.Version(),
		LoadStart: loadAvg(),
		Quick:     quick,
	}
	fail := func(section string, err error) {
		logf("%s failed: %v", section, err)
		res.Errors = append(res.Errors, section+": "+err.Error())
	}
	tmp, err := os.MkdirTemp("", "workersd-bench-")
	if err != nil {
		fatal(err)
	}
	defer os.RemoveAll(tmp)
	abs, err := filepath.Abs(repo)
	if err != nil {
		fatal(err)
	}
	etcd, err := startEtcd(filepath.Join(tmp, "etcd"))
	if err != nil {
		fatal(err)
	}
	defer etcd.Close()

	section := func(name string, f func() error) {
		if !sections[name] || ctx.Err() != nil {
			return
		}
		t0 := time.Now()
		logf("== %s", name)
		if err := f(); err != nil {
			fail(name, err)
		}
		logf("== %s done in %.0f s", name, time.Since(t0).Seconds())
	}
	section("scrape", func() error {
		script := filepath.Join(abs, "bench", "python", "multiproc_scrape.py")
		r, err := runScrape(ctx, etcd, tmp, python, script, logf)
		res.Scrape = r
		return err
	})
	section("adapter", func() error {
		r, err := runAdapter(ctx, etcd, tmp, quick, logf)
		res.Adapter = r
		return err
	})
	section("gokit", func() error {
		r, err := runGoKit(ctx, tmp, quick, logf)
		res.GoKit = r
		return err
	})
	section("own", func() error {
		own := &OwnResult{TTL: "10s"}
		res.Own = own
		n := 4
		if quick {
			n = 2
		}
		own.KillKeyMs, own.KillFileMs, err = runKill(ctx, etcd, tmp, n, logf)
		if err != nil {
			return fmt.Errorf("kill -9: %w", err)
		}
		own.GracefulKey, own.GracefulFile, err = runGraceful(ctx, etcd, tmp, 20)
		if err != nil {
			return fmt.Errorf("graceful stop: %w", err)
		}
		logf("graceful stop: final scrape to file p50 %.1f ms, max %.1f ms", median(own.GracefulFile), own.GracefulFile[len(own.GracefulFile)-1])
		bin := filepath.Join(tmp, "bin", "sdwriter")
		build := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/sdwriter")
		build.Dir, build.Stderr = abs, os.Stderr
		if err := build.Run(); err != nil {
			return fmt.Errorf("build sdwriter: %w", err)
		}
		sizes := []int{1000, 10000, 100000}
		if quick {
			sizes = []int{1000, 10000}
		}
		own.Sizes, err = runSizes(ctx, etcd, tmp, bin, sizes, logf)
		if err != nil {
			return fmt.Errorf("sizes: %w", err)
		}
		window := 20 * time.Second
		if quick {
			window = 5 * time.Second
		}
		if err := runKeepAlive(ctx, etcd, 1000, window, own); err != nil {
			return fmt.Errorf("keep-alive load: %w", err)
		}
		logf("keep-alive load: %.0f /s for %d workers (%.3f /s per worker)", own.KAPerSecond, own.KAWorkers, own.KAPerWorkerS)
		return nil
	})
	etcd.Close()
	section("gotest", func() error {
		res.GoRuns = runGoTests(ctx, abs, goOnly, logf)
		for _, r := range res.GoRuns {
			if r.Err != "" {
				return fmt.Errorf("%s: %s", r.Cmd(), r.Err)
			}
		}
		return nil
	})
	res.LoadEnd = loadAvg()
	res.Seconds = time.Since(start).Seconds()
	logf("measured in %.0f s", res.Seconds)
	return res
}

func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

func cpuModel() string {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return runtime.GOARCH
	}
	for _, l := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return runtime.GOARCH
}
