// Command demo is the workersd quick start: `go run ./examples/demo`.
//
// It builds sdwriter and demoworker, starts sdwriter with no etcd endpoints
// (so it serves an embedded etcd), four demoworker processes that register in
// it, and, when a prometheus binary is on PATH, a Prometheus that discovers
// them through sdwriter's file_sd output. Every few seconds it prints each
// target as sdwriter wrote it (instance, address, slot), the count scraped
// from the target's own /metrics and the job-wide sum, next to the PromQL
// sum when Prometheus runs. After a while it kills one worker with SIGKILL:
// the target disappears when its lease expires and the replacement takes the
// same slot, so the series keep their identity.
//
// Ctrl-C (or --duration) stops everything: workers first (so their final
// scrape happens), then sdwriter and Prometheus. Every child runs in its own
// process group, is killed with its group if it does not stop in time, and
// dies with the demo if the demo itself is killed (Linux parent-death signal).
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/alecthomas/kingpin/v2"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"go.yaml.in/yaml/v2"
)

type options struct {
	duration, interval, killAfter, ttl time.Duration
	workers                            int
	etcdAddr, etcdPeerAddr             string
	sdwriterAddr, promAddr             string
	prometheus                         bool
	workDir                            string
}

func main() {
	app := kingpin.New("demo", "workersd quick start: sdwriter with embedded etcd, four demo workers, optionally Prometheus.")
	var o options
	app.Flag("duration", "Stop by itself after this long; 0 runs until Ctrl-C.").Default("0s").DurationVar(&o.duration)
	app.Flag("interval", "How often the table is printed.").Default("3s").DurationVar(&o.interval)
	app.Flag("kill-after", "Kill one worker with SIGKILL after this long; 0 never.").Default("15s").DurationVar(&o.killAfter)
	app.Flag("workers", "Number of demo workers.").Default("4").IntVar(&o.workers)
	app.Flag("ttl", "Registration TTL of the workers: a killed worker disappears within about this long.").Default("3s").DurationVar(&o.ttl)
	app.Flag("etcd.listen-address", "Client address of sdwriter's embedded etcd.").Default("127.0.0.1:2379").StringVar(&o.etcdAddr)
	app.Flag("etcd.peer-address", "Peer address of sdwriter's embedded etcd.").Default("127.0.0.1:2380").StringVar(&o.etcdPeerAddr)
	app.Flag("sdwriter.listen-address", "sdwriter's web address (/metrics, /sd).").Default("127.0.0.1:9850").StringVar(&o.sdwriterAddr)
	app.Flag("prometheus.listen-address", "Prometheus' web address, when it runs.").Default("127.0.0.1:9090").StringVar(&o.promAddr)
	app.Flag("prometheus", "Start Prometheus when a prometheus binary is on PATH (--no-prometheus to skip).").Default("true").BoolVar(&o.prometheus)
	app.Flag("work-dir", "Directory for binaries, data and logs; default a temporary directory removed at exit.").StringVar(&o.workDir)
	kingpin.MustParse(app.Parse(os.Args[1:]))

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, o); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, o options) error {
	if o.workDir == "" {
		dir, err := os.MkdirTemp("", "workersd-demo-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		o.workDir = dir
	} else if err := os.MkdirAll(o.workDir, 0o755); err != nil {
		return err
	}
	dir, err := filepath.Abs(o.workDir)
	if err != nil {
		return err
	}
	root, err := moduleRoot()
	if err != nil {
		return err
	}
	binDir := filepath.Join(dir, "bin")
	fmt.Println("building sdwriter and demoworker (the first build takes a while)...")
	build := exec.CommandContext(ctx, goBinary(), "build", "-o", binDir+string(filepath.Separator), "./cmd/sdwriter", "./examples/demoworker")
	build.Dir, build.Stdout, build.Stderr = root, os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		return fmt.Errorf("go build: %w", err)
	}
	if o.duration > 0 { // counted from here: the first build may be slow
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, o.duration)
		defer cancel()
	}

	procs := &group{}
	defer procs.stopAll()

	output := filepath.Join(dir, "targets.json")
	if _, err := procs.start("sdwriter", dir, filepath.Join(binDir, "sdwriter"),
		"--etcd.embed.listen-address="+o.etcdAddr,
		"--etcd.embed.peer-address="+o.etcdPeerAddr,
		"--etcd.embed.data-dir="+filepath.Join(dir, "etcd"),
		"--output.file="+output,
		"--web.listen-address="+o.sdwriterAddr,
	); err != nil {
		return err
	}
	fmt.Printf("sdwriter: embedded etcd on %s, file_sd output %s, web on http://%s\n", o.etcdAddr, output, o.sdwriterAddr)

	var promURL string
	if o.prometheus {
		promURL, err = startPrometheus(procs, root, dir, output, o)
		if err != nil {
			fmt.Println("prometheus:", err)
		}
	}

	workerArgs := []string{
		"--etcd.endpoints=" + o.etcdAddr, "--job=demo", "--ttl=" + o.ttl.String(),
		"--listen-address=127.0.0.1:0", "--rate=5", "--job-duration=150ms",
		"--log.level=warn",
	}
	// A final scrape needs a scraper: with Prometheus, wait for its next
	// scrape at exit; without, stop at once.
	if promURL != "" {
		workerArgs = append(workerArgs, "--final-scrape-timeout=5s")
	} else {
		workerArgs = append(workerArgs, "--final-scrape-timeout=0s")
	}
	names := map[string]string{} // address -> worker name
	var mu sync.Mutex
	startWorker := func(n int) (*proc, error) {
		name := "w" + strconv.Itoa(n)
		p, err := procs.start(name, dir, filepath.Join(binDir, "demoworker"), workerArgs...)
		if err != nil {
			return nil, err
		}
		go func() {
			if addr := p.listenAddr(); addr != "" {
				mu.Lock()
				names[addr] = name
				mu.Unlock()
			}
		}()
		return p, nil
	}
	var workers []*proc
	for i := 1; i <= o.workers; i++ {
		p, err := startWorker(i)
		if err != nil {
			return err
		}
		workers = append(workers, p)
	}
	fmt.Printf("started %d demoworker processes; logs in %s\n\n", o.workers, dir)

	begin := time.Now()
	tick := time.NewTicker(o.interval)
	defer tick.Stop()
	var (
		killed      *proc
		killedAddr  string
		killedSlot  string
		replacement *proc
		replAddr    string
		reported    bool
	)
	for {
		targets, ferr := readTargets(output)
		mu.Lock()
		nameOf := func(addr string) string { return names[addr] }
		printTable(time.Since(begin), targets, ferr, nameOf, promURL)
		mu.Unlock()

		switch {
		case killed == nil && o.killAfter > 0 && time.Since(begin) >= o.killAfter && len(workers) > 0:
			killed = workers[0]
			killedAddr = killed.listenAddr()
			for _, t := range targets {
				if t.Address == killedAddr {
					killedSlot = t.Slot
				}
			}
			killed.kill()
			fmt.Printf(">>> killed %s (%s, slot %s) with SIGKILL: no deregistration; its key expires with its lease (TTL %s)\n\n", killed.name, killedAddr, killedSlot, o.ttl)
		case killed != nil && replacement == nil && !hasAddress(targets, killedAddr) && ferr == nil:
			fmt.Printf(">>> %s is gone from the targets; starting a replacement\n\n", killed.name)
			if replacement, err = startWorker(o.workers + 1); err != nil {
				return err
			}
		case replacement != nil && !reported:
			if replAddr == "" {
				replAddr = replacement.listenAddr()
			}
			for _, t := range targets {
				if t.Address == replAddr {
					same := "the same slot"
					if t.Slot != killedSlot {
						same = "a different slot (was " + killedSlot + ")"
					}
					fmt.Printf(">>> replacement %s (%s) registered as %s: slot %s, %s\n\n", replacement.name, replAddr, t.Instance, t.Slot, same)
					reported = true
				}
			}
		}

		select {
		case <-ctx.Done():
			fmt.Println("stopping: workers first (final scrape, deregistration), then sdwriter and Prometheus")
			return nil
		case <-tick.C:
		}
	}
}

func hasAddress(ts []target, addr string) bool {
	for _, t := range ts {
		if t.Address == addr {
			return true
		}
	}
	return false
}

// moduleRoot is the directory of the workersd go.mod, where the builds run.
func moduleRoot() (string, error) {
	out, err := exec.Command(goBinary(), "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", errors.New("run the demo from the workersd repository: go run ./examples/demo")
	}
	return filepath.Dir(mod), nil
}

func goBinary() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	if root := os.Getenv("GOROOT"); root != "" {
		return filepath.Join(root, "bin", "go")
	}
	return "go"
}

// target is one entry of sdwriter's file_sd output.
type target struct {
	Address, Instance, Slot, Job string
}

func readTargets(file string) ([]target, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	var groups []struct {
		Targets []string          `json:"targets"`
		Labels  map[string]string `json:"labels"`
	}
	if err := json.Unmarshal(b, &groups); err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	var out []target
	for _, g := range groups {
		for _, a := range g.Targets {
			out = append(out, target{Address: a, Instance: g.Labels["instance"], Slot: g.Labels["worker"], Job: g.Labels["job"]})
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Job != out[j].Job {
			return out[i].Job < out[j].Job
		}
		a, _ := strconv.Atoi(out[i].Slot)
		b, _ := strconv.Atoi(out[j].Slot)
		return a < b
	})
	return out, nil
}

var httpClient = &http.Client{Timeout: 2 * time.Second}

// scrapeCount reads demo_jobs_processed_total from a target's /metrics.
func scrapeCount(addr string) (float64, error) {
	resp, err := httpClient.Get("http://" + addr + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, errors.New(resp.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		return 0, err
	}
	mf, ok := mfs["demo_jobs_processed_total"]
	if !ok {
		return 0, errors.New("no demo_jobs_processed_total")
	}
	sum := 0.0
	for _, m := range mf.GetMetric() {
		sum += m.GetCounter().GetValue()
	}
	return sum, nil
}

func printTable(elapsed time.Duration, targets []target, ferr error, nameOf func(string) string, promURL string) {
	fmt.Printf("[%s] job demo: %d targets\n", elapsed.Truncate(time.Second), len(targets))
	if ferr != nil && len(targets) == 0 {
		fmt.Printf("  (no targets yet: %v)\n\n", ferr)
		return
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  INSTANCE\tADDRESS\tSLOT\tPROCESS\tdemo_jobs_processed_total")
	sum := 0.0
	for _, t := range targets {
		name := nameOf(t.Address)
		if name == "" {
			name = "?"
		}
		v, err := scrapeCount(t.Address)
		val := strconv.FormatFloat(v, 'f', -1, 64)
		if err != nil {
			val = "scrape failed: " + err.Error()
		} else {
			sum += v
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\n", t.Instance, t.Address, t.Slot, name, val)
	}
	fmt.Fprintf(tw, "  SUM (scraped now)\t\t\t\t%s\n", strconv.FormatFloat(sum, 'f', -1, 64))
	tw.Flush()
	if promURL != "" {
		fmt.Printf("  Prometheus: sum(demo_jobs_processed_total) = %s\n", promSum(promURL))
	}
	fmt.Println()
}

// promSum asks Prometheus for the job-wide sum; it lags the table by up to
// one scrape interval.
func promSum(base string) string {
	resp, err := httpClient.Get(base + "/api/v1/query?query=" + url.QueryEscape("sum(demo_jobs_processed_total)"))
	if err != nil {
		return "n/a (" + err.Error() + ")"
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
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil || r.Status != "success" {
		return "n/a"
	}
	if len(r.Data.Result) == 0 || len(r.Data.Result[0].Value) != 2 {
		return "no data yet"
	}
	s, _ := r.Data.Result[0].Value[1].(string)
	return s
}

// startPrometheus runs Prometheus when it is on PATH, configured from
// examples/prometheus.yml with its discovery pointed at this demo's sdwriter,
// or from a minimal generated configuration when that file is missing.
func startPrometheus(procs *group, root, dir, output string, o options) (string, error) {
	bin, err := exec.LookPath("prometheus")
	if err != nil {
		return "", errors.New("not on PATH; the table shows the sums scraped by the demo itself")
	}
	cfg, note, err := prometheusConfig(filepath.Join(root, "examples", "prometheus.yml"), output, o.sdwriterAddr)
	if err != nil {
		return "", err
	}
	file := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(file, cfg, 0o644); err != nil {
		return "", err
	}
	if _, err := procs.start("prometheus", dir, bin,
		"--config.file="+file,
		"--storage.tsdb.path="+filepath.Join(dir, "prometheus-data"),
		"--web.listen-address="+o.promAddr,
	); err != nil {
		return "", err
	}
	fmt.Printf("prometheus: http://%s (%s)\n", o.promAddr, note)
	return "http://" + o.promAddr, nil
}

// prometheusConfig adapts examples/prometheus.yml to this demo: file_sd
// configs read this demo's output file, http_sd configs ask this demo's
// sdwriter, relative rule files resolve against examples/, and the scrape
// interval is short so the sum moves while you watch.
func prometheusConfig(example, output, sdwriterAddr string) ([]byte, string, error) {
	b, err := os.ReadFile(example)
	if errors.Is(err, os.ErrNotExist) {
		cfg := fmt.Sprintf(`global:
  scrape_interval: 2s
  evaluation_interval: 2s
scrape_configs:
  - job_name: workersd
    file_sd_configs:
      - files: [%q]
        refresh_interval: 5s
`, output)
		return []byte(cfg), "examples/prometheus.yml not found: generated a minimal file_sd configuration", nil
	}
	if err != nil {
		return nil, "", err
	}
	var cfg map[string]any
	if err := yaml.Unmarshal(b, &cfg); err != nil {
		return nil, "", fmt.Errorf("%s: %w", example, err)
	}
	global, _ := cfg["global"].(map[any]any)
	if global == nil {
		global = map[any]any{}
	}
	global["scrape_interval"], global["evaluation_interval"] = "2s", "2s"
	cfg["global"] = global
	if rules, ok := cfg["rule_files"].([]any); ok {
		for i, r := range rules {
			if s, ok := r.(string); ok && !filepath.IsAbs(s) {
				rules[i] = filepath.Join(filepath.Dir(example), s)
			}
		}
	}
	delete(cfg, "alerting") // no Alertmanager in the demo
	scs, _ := cfg["scrape_configs"].([]any)
	for _, sc := range scs {
		m, ok := sc.(map[any]any)
		if !ok {
			continue
		}
		delete(m, "scrape_interval")
		if fs, ok := m["file_sd_configs"].([]any); ok {
			for _, f := range fs {
				if fm, ok := f.(map[any]any); ok {
					fm["files"] = []string{output}
				}
			}
		}
		if hs, ok := m["http_sd_configs"].([]any); ok {
			for _, h := range hs {
				if hm, ok := h.(map[any]any); ok {
					hm["url"] = "http://" + sdwriterAddr + "/sd"
				}
			}
		}
	}
	out, err := yaml.Marshal(cfg)
	if err != nil {
		return nil, "", err
	}
	return out, "examples/prometheus.yml, discovery pointed at this demo", nil
}

// group owns the child processes.
type group struct {
	mu    sync.Mutex
	procs []*proc
}

type proc struct {
	name      string
	cmd       *exec.Cmd
	done      chan struct{}
	addrReady chan struct{} // closed once addr is known or stdout ended
	addr      string        // from the "listening on" line of a demoworker
}

func (g *group) start(name, dir, bin string, args ...string) (*proc, error) {
	logf, err := os.Create(filepath.Join(dir, name+".log"))
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stderr = logf
	// Own process group: Ctrl-C in the terminal reaches the demo only, which
	// stops the children in order (see sysproc_*.go).
	cmd.SysProcAttr = childAttr()
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		logf.Close()
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, done: make(chan struct{}), addrReady: make(chan struct{})}
	go func() {
		defer func() {
			if p.addr == "" {
				close(p.addrReady)
			}
		}()
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			line := sc.Text()
			fmt.Fprintln(logf, line)
			if a, ok := strings.CutPrefix(line, "listening on "); ok && p.addr == "" {
				p.addr = strings.TrimSpace(a)
				close(p.addrReady)
			}
		}
		io.Copy(io.Discard, stdout)
	}()
	go func() {
		cmd.Wait()
		logf.Close()
		close(p.done)
	}()
	g.mu.Lock()
	g.procs = append(g.procs, p)
	g.mu.Unlock()
	return p, nil
}

// listenAddr waits (briefly) for the worker's address line.
func (p *proc) listenAddr() string {
	select {
	case <-p.addrReady:
		return p.addr
	case <-time.After(10 * time.Second):
		return ""
	}
}

func (p *proc) kill() {
	select {
	case <-p.done:
	default:
		killGroup(p.cmd.Process)
	}
	<-p.done
}

// stop asks politely, then kills the group.
func (p *proc) stop(grace time.Duration) {
	select {
	case <-p.done:
	default:
		termGroup(p.cmd.Process)
	}
	select {
	case <-p.done:
	case <-time.After(grace):
		fmt.Printf("%s did not stop within %s; killing it\n", p.name, grace)
		p.kill()
	}
}

// stopAll stops the workers first (their final scrape needs Prometheus and
// their deregistration needs etcd), then everything else.
func (g *group) stopAll() {
	g.mu.Lock()
	procs := append([]*proc(nil), g.procs...)
	g.mu.Unlock()
	var wg sync.WaitGroup
	for _, p := range procs {
		if strings.HasPrefix(p.name, "w") {
			wg.Go(func() { p.stop(10 * time.Second) })
		}
	}
	wg.Wait()
	for _, p := range procs {
		if !strings.HasPrefix(p.name, "w") {
			wg.Go(func() { p.stop(10 * time.Second) })
		}
	}
	wg.Wait()
}
