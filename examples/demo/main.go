// Command demo is the workersd quick start: `go run ./examples/demo`.
//
// It builds sdwriter and demoworker, starts sdwriter with no etcd endpoints
// (so it serves an embedded etcd), four demoworker processes that register in
// it, and a Prometheus that discovers them through sdwriter's file_sd output:
// the 3.x that ./scripts/prometheus builds, run as docs/RESTARTS.md
// recommends, else a prometheus on PATH. Every few seconds it prints each
// target as sdwriter wrote it (instance, address, slot) with the count
// scraped from the target's own /metrics, and Prometheus' job-wide total
// since the demo began next to the units the workers processed. After a
// while it kills one worker with SIGKILL: the target disappears when its
// lease expires, the replacement takes a slot of its own while the old one
// is held, and the two totals still agree. Early on it runs "sdwriter
// check" on its Prometheus, as a deploy pipeline would, and prints whether
// that Prometheus is set up for exact totals (docs/CHECKS.md).
//
// Ctrl-C (or --duration) stops everything: workers first (so their final
// scrape happens), then sdwriter and Prometheus. Every child runs in its own
// process group, is killed with its group if it does not stop in time, and
// dies with the demo if the demo itself is killed (Linux parent-death signal).
//
// The demo only runs what it started: before anything, it refuses to run
// when an address its parts would listen on is in use (a local etcd on
// 127.0.0.1:2379, another sdwriter), naming it, since its workers would
// register in that other etcd; it starts the workers only once its own
// sdwriter is ready; and when a part it started exits unasked, it says
// which, with the part's last log line, stops the rest and exits 1.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/alecthomas/kingpin/v2"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"go.yaml.in/yaml/v2"

	"github.com/workersd/workersd/internal/procgroup"
	"github.com/workersd/workersd/internal/testing/promtest"
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
	app.Flag("prometheus", "Start Prometheus: bin/prometheus-3.15.0 (./scripts/prometheus builds it), else one on PATH (--no-prometheus to skip).").Default("true").BoolVar(&o.prometheus)
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
	var prom *promBinary
	if o.prometheus {
		if prom, err = findPrometheus(root); err != nil {
			fmt.Println("prometheus:", err)
		}
	}
	// Before the build, so that a refusal comes at once.
	if err := checkAddresses(o, prom != nil); err != nil {
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

	procs := newGroup(dir)
	defer procs.stopAll()

	output := filepath.Join(dir, "targets.json")
	sdwriter, err := procs.start("sdwriter", filepath.Join(binDir, "sdwriter"),
		"--etcd.embed.listen-address="+o.etcdAddr,
		"--etcd.embed.peer-address="+o.etcdPeerAddr,
		"--etcd.embed.data-dir="+filepath.Join(dir, "etcd"),
		"--output.file="+output,
		"--web.listen-address="+o.sdwriterAddr,
	)
	if err != nil {
		return err
	}
	// The workers register only in this sdwriter's etcd: they start once
	// it serves, and the demo stops if it exits.
	if err := waitReady(ctx, sdwriter, "http://"+o.sdwriterAddr+"/-/ready", time.Minute); err != nil {
		return err
	}
	if ctx.Err() != nil {
		return nil
	}
	fmt.Printf("sdwriter: embedded etcd on %s, file_sd output %s, web on http://%s\n", o.etcdAddr, output, o.sdwriterAddr)

	var promURL string
	if prom != nil {
		promURL, err = startPrometheus(procs, prom, root, dir, output, o)
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
	startWorker := func(n int, extra ...string) (*proc, error) {
		name := "w" + strconv.Itoa(n)
		p, err := procs.start(name, filepath.Join(binDir, "demoworker"), append(workerArgs, extra...)...)
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
	// The worker to be killed processes a batch, then idles: killed, it
	// has no count Prometheus could not have scraped, so the truth stays
	// known to the unit.
	var workers []*proc
	for i := 1; i <= o.workers; i++ {
		var extra []string
		if i == 1 && o.killAfter > 0 {
			extra = []string{"--jobs=" + strconv.Itoa(victimBatch)}
		}
		p, err := startWorker(i, extra...)
		if err != nil {
			return err
		}
		workers = append(workers, p)
	}
	fmt.Printf("started %d demoworker processes; logs in %s\n", o.workers, dir)
	if o.killAfter > 0 {
		fmt.Printf("w1 processes a batch of %d units, then idles; it is killed after %s\n", victimBatch, o.killAfter)
	}
	fmt.Println()
	tally := &tally{batch: map[*proc]int{}}
	if o.killAfter > 0 {
		tally.batch[workers[0]] = victimBatch
	}

	begin := time.Now()
	tick := time.NewTicker(o.interval)
	defer tick.Stop()
	// The check a deploy pipeline runs: is this Prometheus set up for
	// exact totals? Once Prometheus has had time to scrape every worker.
	var checked chan string
	checkAt := begin.Add(checkAfter)
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
		counts := printTable(time.Since(begin), targets, ferr, nameOf)
		mu.Unlock()
		for _, p := range procs.workers() {
			if c, ok := counts[p.listenAddr()]; ok {
				tally.seen(p, c)
			}
		}
		printTotals(promURL, begin, tally.total(procs.workers()), false)
		if promURL != "" && checked == nil && time.Now().After(checkAt) {
			checked = make(chan string, 1)
			go func() { checked <- checkPrometheus(ctx, filepath.Join(binDir, "sdwriter"), o.sdwriterAddr, promURL) }()
		}

		switch {
		case killed == nil && o.killAfter > 0 && time.Since(begin) >= o.killAfter && len(workers) > 0 &&
			scrapedBatch(promURL, targets, workers[0].listenAddr()):
			killed = workers[0]
			killedAddr = killed.listenAddr()
			for _, t := range targets {
				if t.Address == killedAddr {
					killedSlot = t.Slot
				}
			}
			killed.kill()
			fmt.Printf(">>> killed %s (%s, slot %s) with SIGKILL: no deregistration; its key expires with its lease (TTL %s)\n\n", killed.name, killedAddr, killedSlot, o.ttl)
			tally.killed(killed)
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
					why := "slot " + killedSlot + " is held until Prometheus is surely done with the killed worker's target, so the new counts start a series of their own"
					if t.Slot == killedSlot {
						why = "the killed worker's slot, its hold expired"
					}
					fmt.Printf(">>> replacement %s (%s) registered as %s: slot %s; %s\n\n", replacement.name, replAddr, t.Instance, t.Slot, why)
					reported = true
				}
			}
		}

		select {
		case <-ctx.Done():
			fmt.Println("stopping: workers first (final scrape, deregistration), then sdwriter and Prometheus")
			procs.stopWorkers()
			printTotals(promURL, begin, tally.total(procs.workers()), true)
			return nil
		case p := <-procs.exited:
			return p.exitError()
		case report := <-checked:
			fmt.Println(report)
		case <-tick.C:
		}
	}
}

// checkAfter is when the demo checks its Prometheus: after a few scrapes
// of every worker.
const checkAfter = 8 * time.Second

// checkPrometheus runs "sdwriter check" on this demo's sdwriter and
// Prometheus, as a deploy pipeline would, and returns what it printed.
func checkPrometheus(ctx context.Context, sdwriter, sdwriterAddr, promURL string) string {
	args := []string{"check", "--sdwriter.url=http://" + sdwriterAddr, "--prometheus.url=" + promURL,
		// The demo's workers wait 5 s for their final scrape.
		"--check.final-scrape-timeout=5s"}
	cmd := exec.CommandContext(ctx, sdwriter, args...)
	out, err := cmd.CombinedOutput()
	var head string
	switch {
	case ctx.Err() != nil:
		return ""
	case err == nil:
		head = "set up for exact totals"
	case cmd.ProcessState != nil && cmd.ProcessState.ExitCode() == 1:
		head = "NOT set up for exact totals: see the fixes below"
	default:
		head = "the check did not run: " + err.Error()
	}
	return fmt.Sprintf(">>> is this Prometheus %s? sdwriter %s\n%s", head, strings.Join(args, " "),
		indent(strings.TrimRight(string(out), "\n"), "    "))
}

func indent(s, prefix string) string {
	return prefix + strings.ReplaceAll(s, "\n", "\n"+prefix) + "\n"
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

// printTable prints the targets with the count each serves now, and returns
// those counts by address.
func printTable(elapsed time.Duration, targets []target, ferr error, nameOf func(string) string) map[string]float64 {
	fmt.Printf("[%s] job demo: %d targets\n", elapsed.Truncate(time.Second), len(targets))
	counts := map[string]float64{}
	if ferr != nil && len(targets) == 0 {
		fmt.Printf("  (no targets yet: %v)\n", ferr)
		return counts
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
			counts[t.Address] = v
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\n", t.Instance, t.Address, t.Slot, name, val)
	}
	fmt.Fprintf(tw, "  SUM of the live workers (scraped now)\t\t\t\t%s\n", strconv.FormatFloat(sum, 'f', -1, 64))
	tw.Flush()
	return counts
}

// victimBatch is what the worker to be killed processes before it idles.
const victimBatch = 40

// tally is the truth: the units every worker lifetime processed, as far as
// the demo knows them. A live worker's count is the one the demo last read
// from it (newer than Prometheus' by up to a scrape), a gracefully stopped
// one's the "processed N units" it printed after its final scrape, a killed
// one's its batch.
type tally struct {
	mu     sync.Mutex
	latest map[*proc]float64
	batch  map[*proc]int
	dead   map[*proc]bool
}

func (t *tally) seen(p *proc, v float64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.latest == nil {
		t.latest = map[*proc]float64{}
	}
	t.latest[p] = v
}

func (t *tally) killed(p *proc) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.dead == nil {
		t.dead = map[*proc]bool{}
	}
	t.dead[p] = true
}

func (t *tally) total(ws []*proc) float64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	sum := 0.0
	for _, p := range ws {
		switch n, ok := p.finalCount(); {
		case ok:
			sum += float64(n)
		case t.dead[p]:
			sum += float64(t.batch[p])
		default:
			sum += t.latest[p]
		}
	}
	return sum
}

// scrapedBatch says whether Prometheus (if any) has scraped the whole batch
// of the worker at addr: what it never scraped, a kill would lose.
func scrapedBatch(promURL string, targets []target, addr string) bool {
	if promURL == "" {
		return true
	}
	for _, t := range targets {
		if t.Address != addr {
			continue
		}
		ss, err := promtest.RawSamples(promURL, fmt.Sprintf(`demo_jobs_processed_total{job="demo",instance=%q}`, t.Instance), time.Now().Add(-time.Minute), time.Now())
		if err != nil || len(ss) != 1 {
			return false
		}
		last := ss[0].Samples[len(ss[0].Samples)-1]
		return last.V == victimBatch
	}
	return false
}

// printTotals prints Prometheus' job-wide total since the demo began (the
// reset-aware total of its raw samples) beside the units processed.
func printTotals(promURL string, begin time.Time, truth float64, final bool) {
	if promURL == "" {
		fmt.Printf("  units processed by every worker since the demo began: %.0f (no Prometheus to compare with; ./scripts/prometheus builds one)\n\n", truth)
		return
	}
	raw, _, err := promtest.Totals(promURL, `demo_jobs_processed_total{job="demo"}`, begin.Add(-time.Minute), time.Now())
	switch {
	case err != nil && !final:
		fmt.Printf("  units processed since the demo began: %.0f; Prometheus is not answering yet\n\n", truth)
	case err != nil:
		fmt.Printf("final: units processed %.0f; Prometheus: %v\n", truth, err)
	case final && raw == truth:
		fmt.Printf("final: Prometheus' job-wide total %.0f = units processed %.0f: exact, through the kill and the replacement\n", raw, truth)
	case final:
		fmt.Printf("final: Prometheus' job-wide total %.0f, units processed %.0f: they differ by %.0f\n", raw, truth, truth-raw)
	default:
		fmt.Printf("  job-wide total since the demo began: Prometheus %.0f, units processed %.0f (Prometheus is up to one scrape behind)\n\n", raw, truth)
	}
}

// promBinary is the Prometheus the demo runs, with its flags.
type promBinary struct {
	bin   string
	flags []string
}

// findPrometheus finds the Prometheus 3 that ./scripts/prometheus builds,
// run with created-timestamp-zero-ingestion (the setup docs/RESTARTS.md
// recommends), else a prometheus on PATH.
func findPrometheus(root string) (*promBinary, error) {
	bin := filepath.Join(root, "bin", "prometheus-3.15.0")
	if _, err := os.Stat(bin); err == nil {
		return &promBinary{bin: bin, flags: []string{"--enable-feature=created-timestamp-zero-ingestion"}}, nil
	}
	bin, err := exec.LookPath("prometheus")
	if err != nil {
		return nil, errors.New("none found; ./scripts/prometheus builds Prometheus 3.15 into bin/ (about 4 minutes, once)")
	}
	fmt.Printf("prometheus: using %s; for totals that stay exact through restarts, ./scripts/prometheus builds 3.15 (about 4 minutes, once)\n", bin)
	return &promBinary{bin: bin}, nil
}

// startPrometheus runs prom configured from examples/prometheus.yml with its
// discovery pointed at this demo's sdwriter, or from a minimal generated
// configuration when that file is missing.
func startPrometheus(procs *group, prom *promBinary, root, dir, output string, o options) (string, error) {
	cfg, note, err := prometheusConfig(filepath.Join(root, "examples", "prometheus.yml"), output, o.sdwriterAddr)
	if err != nil {
		return "", err
	}
	file := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(file, cfg, 0o644); err != nil {
		return "", err
	}
	if _, err := procs.start("prometheus", prom.bin, append([]string{
		"--config.file=" + file,
		"--storage.tsdb.path=" + filepath.Join(dir, "prometheus-data"),
		"--web.listen-address=" + o.promAddr,
	}, prom.flags...)...); err != nil {
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
	dir    string     // where each child's log is written
	exited chan *proc // a child that exited unasked
	mu     sync.Mutex
	procs  []*proc
}

func newGroup(dir string) *group {
	return &group{dir: dir, exited: make(chan *proc, 16)}
}

type proc struct {
	name      string
	cmd       *exec.Cmd
	log       string // its stderr and stdout
	done      chan struct{}
	asked     atomic.Bool   // the demo stops or kills it: its exit is expected
	lastLine  string        // of its log, once done
	addrReady chan struct{} // closed once addr is known or stdout ended
	addr      string        // from the "listening on" line of a demoworker

	mu       sync.Mutex
	final    int64 // from the "processed N units" line of a demoworker
	hasFinal bool
}

// finalCount is what a gracefully stopped demoworker printed it processed.
func (p *proc) finalCount() (int64, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.final, p.hasFinal
}

func (g *group) start(name, bin string, args ...string) (*proc, error) {
	logName := filepath.Join(g.dir, name+".log")
	logf, err := os.Create(logName)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stderr = logf
	// Own process group: Ctrl-C in the terminal reaches the demo only, which
	// stops the children in order (see sysproc_*.go).
	cmd.SysProcAttr = procgroup.Attr()
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		logf.Close()
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, log: logName, done: make(chan struct{}), addrReady: make(chan struct{})}
	stdoutDone := make(chan struct{})
	go func() {
		defer close(stdoutDone)
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
			var n int64
			if _, err := fmt.Sscanf(line, "processed %d units", &n); err == nil {
				p.mu.Lock()
				p.final, p.hasFinal = n, true
				p.mu.Unlock()
			}
		}
		io.Copy(io.Discard, stdout)
	}()
	go func() {
		<-stdoutDone // Wait closes the pipe: read it all first
		cmd.Wait()
		logf.Close()
		p.lastLine = lastLine(logName)
		close(p.done)
		if !p.asked.Load() {
			select {
			case g.exited <- p:
			default:
			}
		}
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
	p.asked.Store(true)
	select {
	case <-p.done:
	default:
		procgroup.Kill(p.cmd.Process)
	}
	<-p.done
}

// stop asks politely, then kills the group.
func (p *proc) stop(grace time.Duration) {
	p.asked.Store(true)
	select {
	case <-p.done:
	default:
		procgroup.Term(p.cmd.Process)
	}
	select {
	case <-p.done:
	case <-time.After(grace):
		fmt.Printf("%s did not stop within %s; killing it\n", p.name, grace)
		p.kill()
	}
}

// workers are the demoworker processes started so far, dead or alive.
func (g *group) workers() []*proc {
	g.mu.Lock()
	defer g.mu.Unlock()
	var ws []*proc
	for _, p := range g.procs {
		if strings.HasPrefix(p.name, "w") {
			ws = append(ws, p)
		}
	}
	return ws
}

// stopWorkers stops the workers gracefully: each waits for its final
// scrape, then deregisters.
func (g *group) stopWorkers() {
	var wg sync.WaitGroup
	for _, p := range g.workers() {
		wg.Go(func() { p.stop(10 * time.Second) })
	}
	wg.Wait()
}

// stopAll stops the workers first (their final scrape needs Prometheus and
// their deregistration needs etcd), then everything else.
func (g *group) stopAll() {
	g.stopWorkers()
	g.mu.Lock()
	procs := append([]*proc(nil), g.procs...)
	g.mu.Unlock()
	var wg sync.WaitGroup
	for _, p := range procs {
		if !strings.HasPrefix(p.name, "w") {
			wg.Go(func() { p.stop(10 * time.Second) })
		}
	}
	wg.Wait()
}

// exitError says which part exited and why: how it ended and the last line
// it logged. Call it once p is done.
func (p *proc) exitError() error {
	why := p.lastLine
	if why == "" {
		why = "(it logged nothing)"
	}
	return fmt.Errorf("%s exited (%s), stopping the demo; its last log line:\n  %s", p.name, p.cmd.ProcessState, why)
}

// lastLine is the last non-blank line of a file, "" when there is none.
func lastLine(file string) string {
	b, err := os.ReadFile(file)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), " \t\r\n"), "\n")
	return strings.TrimSpace(lines[len(lines)-1])
}

// waitReady waits until url answers 200 (sdwriter's /-/ready: its etcd
// serves and it has listed it). It fails as soon as p exits, or after
// timeout; it returns nil when ctx ends first (Ctrl-C).
func waitReady(ctx context.Context, p *proc, url string, timeout time.Duration) error {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		if resp, err := httpClient.Get(url); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-p.done:
			return p.exitError()
		case <-ctx.Done():
			return nil
		case <-deadline.C:
			return fmt.Errorf("%s is not ready after %s (%s), stopping the demo; its last log line:\n  %s", p.name, timeout, url, lastLine(p.log))
		case <-tick.C:
		}
	}
}

// checkAddresses refuses to run when an address a part of the demo would
// listen on is in use: with 127.0.0.1:2379 taken (a local etcd, another
// sdwriter), the demo's sdwriter would exit at start and its workers would
// register in that other etcd. It names each address in use and suggests
// free ones.
func checkAddresses(o options, prometheus bool) error {
	type addr struct{ flag, what, addr string }
	addrs := []addr{
		{"--etcd.listen-address", "the embedded etcd's client address", o.etcdAddr},
		{"--etcd.peer-address", "the embedded etcd's peer address", o.etcdPeerAddr},
		{"--sdwriter.listen-address", "sdwriter's web address", o.sdwriterAddr},
	}
	if prometheus {
		addrs = append(addrs, addr{"--prometheus.listen-address", "Prometheus' web address", o.promAddr})
	}
	var busy, other, suggest []string
	for _, a := range addrs {
		l, err := net.Listen("tcp", a.addr)
		if err == nil {
			l.Close()
			continue
		}
		if !errors.Is(err, syscall.EADDRINUSE) {
			other = append(other, fmt.Sprintf("%s %s (%s): %v", a.flag, a.addr, a.what, err))
			continue
		}
		busy = append(busy, fmt.Sprintf("  %s (%s, %s) is in use", a.addr, a.what, a.flag))
		if free := freeAddr(a.addr); free != "" {
			suggest = append(suggest, a.flag+"="+free)
		}
	}
	if len(other) > 0 {
		return fmt.Errorf("cannot listen: %s", strings.Join(other, "; "))
	}
	if len(busy) == 0 {
		return nil
	}
	msg := "refusing to start: another program listens where the demo's parts would:\n" + strings.Join(busy, "\n") +
		"\nA local etcd or another sdwriter, perhaps: the demo's sdwriter would exit at start and its workers would register in that other etcd." +
		"\nStop it, or give the demo addresses of its own"
	if len(suggest) > 0 {
		msg += ", e.g.\n  go run ./examples/demo " + strings.Join(suggest, " ")
	}
	return errors.New(msg)
}

// freeAddr is a free port on addr's host, "" when none can be had.
func freeAddr(addr string) string {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return ""
	}
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return ""
	}
	defer l.Close()
	return l.Addr().String()
}
