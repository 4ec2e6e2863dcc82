// Command fleet measures sdwriter at fleet scale (issue 13): a separate
// etcd process holding 100,000 registrations, sdwriter writing the file
// Prometheus 3 reads as examples/prometheus.yml says, and workers
// restarting at a steady rate (each restart deletes a registration and
// puts one on another slot of the same host, as the registrar does with
// slot holds). It runs the same load twice, with --output.write-rate=0
// (every change written at once, as sdwriter did before) and with the
// default, and reports both side by side: CPU of sdwriter, Prometheus and
// etcd, bytes written, how soon each change reached the file and
// Prometheus, and the initial sync at 100,000 and 250,000 registrations.
//
// Run it with `scripts/bench fleet`, which splices the table into
// docs/BENCHMARKS.md. Prometheus scrapes none of the targets (its
// relabelling drops them all): what is measured is the cost of discovery.
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/workersd/workersd/internal/etcdclient"
	"github.com/workersd/workersd/internal/procstatus"
	"github.com/workersd/workersd/registrar"
	"github.com/workersd/workersd/sdfile"
)

const prefix = registrar.DefaultPrefix

func main() {
	var (
		repo    = flag.String("repo", "..", "root of the workersd repository")
		prom    = flag.String("prometheus", os.Getenv("WORKERSD_PROMETHEUS3"), "Prometheus 3 binary (scripts/prometheus builds it)")
		n       = flag.Int("n", 100_000, "registrations")
		big     = flag.Int("big", 250_000, "registrations of the second initial sync (0: skip)")
		rate    = flag.Int("rate", 200, "worker restarts per second (each a delete and a put)")
		seconds = flag.Int("seconds", 60, "duration of the churn")
		out     = flag.String("out", "", "write the markdown table here")
		profile = flag.String("profile", "", "save CPU profiles of sdwriter and Prometheus during the paced churns here: <file>[.shards][.prometheus]")
		only    = flag.String("only", "before,after,shards", "the runs to make, of before, after and shards")
		extra   = flag.String("sdwriter-flag", "", "one more sdwriter flag for the after and shards runs (to try a setting)")
		huge    = flag.Int("huge", 0, "registrations of a last run without Prometheus, after the others (0: skip; issue 27: 1000000)")
		hugeSh  = flag.Int("huge-shards", 8, "sdwriter's --output.shards in the -huge run")
		hugeR   = flag.Int("huge-rate", 2000, "worker restarts per second in the -huge run")
		hugeS   = flag.Int("huge-seconds", 30, "duration of the -huge run's churn")
	)
	flag.Parse()
	if *prom == "" {
		fatal(errors.New("no Prometheus: -prometheus or WORKERSD_PROMETHEUS3"))
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	b := &bench{repo: *repo, prom: *prom, n: *n, rate: *rate, window: time.Duration(*seconds) * time.Second, profile: *profile,
		only: strings.Split(*only, ","), extra: *extra,
		hugeN: *huge, hugeShards: *hugeSh, hugeRate: *hugeR, hugeWindow: time.Duration(*hugeS) * time.Second}
	table, err := b.run(ctx, *big)
	b.cleanup()
	if err != nil {
		fatal(err)
	}
	fmt.Print(table)
	if *out != "" {
		if err := os.WriteFile(*out, []byte(table), 0o644); err != nil {
			fatal(err)
		}
	}
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "fleet:", err)
	os.Exit(1)
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s fleet: %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}

type bench struct {
	repo, prom string
	n, rate    int
	window     time.Duration
	profile    string
	only       []string
	extra      string
	hugeN      int
	hugeShards int
	hugeRate   int
	hugeWindow time.Duration

	tmp   string
	procs []*exec.Cmd
	cli   *clientv3.Client
	etcd  *exec.Cmd

	// The registrations in etcd: key -> host index, and the next slot of
	// each host (slots are not reused within a run, as with slot holds).
	live     []string
	nextSlot []int
	serial   int
}

// result is one churn run.
type result struct {
	mode                     string
	shards                   int
	ready                    time.Duration // sdwriter start to the file holding every registration
	rss                      float64       // sdwriter's peak RSS at that point, MB
	sdwCPU, promCPU, etcdCPU float64       // cores, averaged over the window
	promIdleCPU              float64       // Prometheus' cores over 20 s before the churn
	bytes                    float64       // written by sdwriter (wchar) in the window
	writes                   float64       // sdwriter_output_writes_total in the window
	restarts                 int
	fileLat                  []time.Duration // put of a canary to the first file holding it
	scanMean, scanP99        float64         // Prometheus' file_sd read-and-parse, seconds
	scans                    float64
	discovered               float64
	fileBytes                int
}

// saveProfile saves a CPU profile of secs seconds from the pprof handler
// at addr.
func saveProfile(addr, file string, secs int) {
	resp, err := http.Get(fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", addr, secs))
	if err != nil {
		logf("profile: %v", err)
		return
	}
	defer resp.Body.Close()
	f, err := os.Create(file)
	if err != nil {
		logf("profile: %v", err)
		return
	}
	defer f.Close()
	if _, err := io.Copy(f, resp.Body); err != nil {
		logf("profile: %v", err)
	}
}

func (b *bench) cleanup() {
	for _, p := range slices.Backward(b.procs) {
		stopProc(p)
	}
	if b.cli != nil {
		b.cli.Close()
	}
	if b.tmp != "" {
		os.RemoveAll(b.tmp)
	}
}

func (b *bench) run(ctx context.Context, big int) (string, error) {
	var err error
	if b.tmp, err = os.MkdirTemp("", "workersd-fleet-"); err != nil {
		return "", err
	}
	bin := filepath.Join(b.tmp, "bin")
	logf("building sdwriter and etcdmember")
	build := exec.CommandContext(ctx, "go", "build", "-o", bin+"/", "./cmd/sdwriter", "./integration/cmd/etcdmember")
	build.Dir, build.Stderr = b.repo, os.Stderr
	if err := build.Run(); err != nil {
		return "", fmt.Errorf("build: %w", err)
	}
	if err := b.startEtcd(ctx, bin); err != nil {
		return "", err
	}
	t0 := time.Now()
	if err := b.populate(ctx, b.n); err != nil {
		return "", err
	}
	logf("%d registrations in etcd after %s", b.n, time.Since(t0).Round(time.Millisecond))

	var results []*result
	for _, mode := range []struct {
		id, name string
		shards   int
		flags    []string
	}{
		{"before", "before: every change written (--output.write-rate=0)", 1, []string{"--output.write-rate=0"}},
		{"after", fmt.Sprintf("after: default (--output.write-rate=%dMiB)", sdfile.DefaultWriteRate>>20), 1, nil},
		{"shards", fmt.Sprintf("after, --output.shards=%d: the Prometheus of shard 0", shards), shards, []string{fmt.Sprintf("--output.shards=%d", shards)}},
	} {
		if !slices.Contains(b.only, mode.id) {
			continue
		}
		if b.extra != "" && mode.id != "before" {
			mode.name += " " + b.extra
			mode.flags = append(mode.flags, b.extra)
		}
		r, err := b.churn(ctx, bin, mode.name, mode.shards, mode.flags)
		if err != nil {
			return "", fmt.Errorf("%s: %w", mode.name, err)
		}
		results = append(results, r)
	}

	var bigReady time.Duration
	var bigRSS float64
	var bigBytes int
	if big > b.n {
		t0 := time.Now()
		if err := b.populate(ctx, big-len(b.live)); err != nil {
			return "", err
		}
		logf("%d registrations in etcd after %s", len(b.live), time.Since(t0).Round(time.Millisecond))
		dir := filepath.Join(b.tmp, "big")
		sdw, ready, rss, size, err := b.startSdwriter(ctx, bin, dir, 1)
		if err != nil {
			return "", err
		}
		// Then the status page and http_sd served (issue 27: the memory
		// figure holds with them), and the peak RSS after.
		web := argValue(sdw.Args, "--web.listen-address=")
		status, _, err := timeGet(web, "/api/v1/status?limit=1000")
		if err != nil {
			stopProc(sdw)
			return "", err
		}
		sd, _, err := timeGet(web, "/sd")
		if err != nil {
			stopProc(sdw)
			return "", err
		}
		hwm, _ := procstatus.Bytes(sdw.Process.Pid, "VmHWM")
		stopProc(sdw)
		bigReady, bigRSS, bigBytes = ready, float64(hwm)/1e6, size
		logf("initial sync of %d: %s, peak RSS %.0f MB; then the status page in %s and /sd in %s: peak RSS %.0f MB", len(b.live), ready.Round(time.Millisecond), rss, status.Round(time.Millisecond), sd.Round(time.Millisecond), bigRSS)
	}
	table := b.table(results, big, bigReady, bigRSS, bigBytes)
	if b.hugeN > len(b.live) {
		h, err := b.huge(ctx, bin, b.hugeN, b.hugeShards, b.hugeRate, b.hugeWindow)
		if err != nil {
			return "", fmt.Errorf("huge: %w", err)
		}
		table += h.markdown()
	}
	return table, nil
}

func (b *bench) startEtcd(ctx context.Context, bin string) error {
	client, peer := freeAddr(), freeAddr()
	cmd := exec.Command(filepath.Join(bin, "etcdmember"), "--name=m0", "--data-dir="+filepath.Join(b.tmp, "etcd"),
		"--client-address="+client, "--peer-address="+peer, "--initial-cluster=m0=http://"+peer, "--unsafe-no-fsync")
	if _, err := b.start(cmd, "ready"); err != nil {
		return fmt.Errorf("etcd: %w", err)
	}
	b.etcd = cmd
	var err error
	b.cli, err = etcdclient.New([]string{client}, clientv3.Config{MaxCallSendMsgSize: 64 << 20})
	return err
}

// value is a registration as the registrar writes it, and its address.
func (b *bench) value(host int) (value, address string) {
	b.serial++
	i := b.serial
	// Unique (sdwriter drops all but one of the keys naming an address).
	address = fmt.Sprintf("10.%d.%d.%d:%d", i>>16&255, i>>8&255, i&255, 20000+host%40000)
	pid := 1000 + i%4_000_000
	v, err := registrar.Value{
		Address:     address,
		MetricsPath: registrar.OwnMetricsPath(pid), // as every workersd client registers
		PID:         pid,
		StartedAt:   time.Now().UTC(),
		Labels:      map[string]string{"version": "1.4.2"},
	}.Encode()
	if err != nil {
		panic(err)
	}
	return string(v), address
}

const (
	slotsPerHost = 50
	shards       = 4
)

func (b *bench) key(host int) string {
	for len(b.nextSlot) <= host {
		b.nextSlot = append(b.nextSlot, 0)
	}
	slot := b.nextSlot[host]
	b.nextSlot[host]++
	return fmt.Sprintf("%sapp-%d/host-%05d/%d", prefix, host%10, host, slot)
}

func hostOf(key string) int {
	k, err := registrar.ParseKey(prefix, key)
	if err != nil {
		panic(err)
	}
	h, _ := strconv.Atoi(strings.TrimPrefix(k.Host, "host-"))
	return h
}

// populate adds count registrations, slotsPerHost per host.
func (b *bench) populate(ctx context.Context, count int) error {
	for done := 0; done < count; {
		var ops []clientv3.Op
		for ; done < count && len(ops) < 128; done++ {
			host := len(b.live) / slotsPerHost
			k := b.key(host)
			v, _ := b.value(host)
			ops = append(ops, clientv3.OpPut(k, v))
			b.live = append(b.live, k)
		}
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		_, err := b.cli.Txn(cctx).Then(ops...).Commit()
		cancel()
		if err != nil {
			return fmt.Errorf("populate: %w", err)
		}
	}
	return nil
}

// startSdwriter starts sdwriter writing dir/workersd.json (or its shard
// files) and waits until the files hold every registration; size is that
// of the first file.
func (b *bench) startSdwriter(ctx context.Context, bin, dir string, shards int, flags ...string) (cmd *exec.Cmd, ready time.Duration, rssMB float64, size int, err error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, 0, 0, 0, err
	}
	file := filepath.Join(dir, "workersd.json")
	args := []string{"--etcd.endpoints=" + b.cli.Endpoints()[0], "--output.file=" + file,
		"--web.listen-address=" + freeAddr(), "--log.level=warn"}
	args = append(args, flags...)
	cmd = exec.Command(filepath.Join(bin, "sdwriter"), args...)
	start := time.Now()
	if _, err := b.start(cmd, ""); err != nil {
		return nil, 0, 0, 0, err
	}
	for {
		if ctx.Err() != nil {
			return nil, 0, 0, 0, ctx.Err()
		}
		total := 0
		for k := range shards {
			data, err := os.ReadFile(sdfile.ShardFile(file, k, shards))
			if err != nil {
				total = -1
				break
			}
			if k == 0 {
				size = len(data)
			}
			total += bytes.Count(data, []byte(`{"targets":`))
		}
		if total == len(b.live) {
			ready = time.Since(start)
			break
		}
		if time.Since(start) > 2*time.Minute {
			return nil, 0, 0, 0, errors.New("sdwriter did not write every registration within 2 minutes")
		}
		time.Sleep(20 * time.Millisecond)
	}
	hwm, _ := procstatus.Bytes(cmd.Process.Pid, "VmHWM") // 0 without /proc
	return cmd, ready, float64(hwm) / 1e6, size, nil
}

// inShard0 counts the live registrations of shard 0.
func (b *bench) inShard0(shards int) int {
	n := 0
	for _, k := range b.live {
		if sdfile.Shard(instanceOf(k), shards) == 0 {
			n++
		}
	}
	return n
}

// instanceOf is the instance label sdwriter gives key: host/slot.
func instanceOf(key string) string {
	k, err := registrar.ParseKey(prefix, key)
	if err != nil {
		panic(err) // the harness writes only slot keys
	}
	return k.Instance()
}

func (b *bench) churn(ctx context.Context, bin, mode string, shards int, flags []string) (*result, error) {
	r := &result{mode: mode, shards: shards}
	dir := filepath.Join(b.tmp, fmt.Sprintf("targets-%d", len(b.procs)))
	sdw, ready, rss, size, err := b.startSdwriter(ctx, bin, dir, shards, flags...)
	if err != nil {
		return nil, err
	}
	defer stopProc(sdw)
	r.ready, r.rss, r.fileBytes = ready, rss, size
	sdwWeb := argValue(sdw.Args, "--web.listen-address=")
	logf("%s: sdwriter wrote %d registrations (%.1f MiB) %s after its start, peak RSS %.0f MB", mode, len(b.live), float64(size)/(1<<20), ready.Round(time.Millisecond), rss)

	promWeb := freeAddr()
	cfg := filepath.Join(b.tmp, fmt.Sprintf("prometheus-%d.yml", len(b.procs)))
	// examples/prometheus.yml's discovery (file_sd on *.json, refresh 30s;
	// with shards, server 0's file), with every target dropped: discovery
	// is measured, not scraping.
	file := filepath.Join(dir, "workersd.json")
	glob := filepath.Join(dir, "*.json")
	if shards > 1 {
		file = sdfile.ShardFile(file, 0, shards)
		glob = file
	}
	want := b.inShard0(shards)
	conf := fmt.Sprintf(`global: {scrape_interval: 10s}
scrape_configs:
  - job_name: workersd
    file_sd_configs:
      - files: [%q]
        refresh_interval: 30s
    relabel_configs:
      - action: drop
        source_labels: [__address__]
        regex: .+
`, glob)
	if err := os.WriteFile(cfg, []byte(conf), 0o644); err != nil {
		return nil, err
	}
	prom := exec.Command(b.prom, "--config.file="+cfg, "--storage.tsdb.path="+filepath.Join(b.tmp, fmt.Sprintf("tsdb-%d", len(b.procs))),
		"--web.listen-address="+promWeb, "--log.level=warn")
	if _, err := b.start(prom, ""); err != nil {
		return nil, err
	}
	defer stopProc(prom)
	deadline := time.Now().Add(3 * time.Minute)
	for {
		m, err := scrapeMetrics("http://" + promWeb + "/metrics")
		if err == nil && m[`prometheus_sd_discovered_targets{config="workersd",name="scrape"}`] == float64(want) {
			break
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return nil, fmt.Errorf("Prometheus did not discover the %d targets within 3 minutes (%v)", want, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	// Prometheus at rest with the targets loaded, for comparison.
	idle0 := cpuSeconds(prom.Process.Pid)
	sleepCtx(ctx, 20*time.Second)
	r.promIdleCPU = (cpuSeconds(prom.Process.Pid) - idle0) / 20

	m0, err := scrapeMetrics("http://" + sdwWeb + "/metrics")
	if err != nil {
		return nil, err
	}
	p0, err := scrapeMetrics("http://" + promWeb + "/metrics")
	if err != nil {
		return nil, err
	}
	c0 := [3]float64{cpuSeconds(sdw.Process.Pid), cpuSeconds(prom.Process.Pid), cpuSeconds(b.etcd.Process.Pid)}
	w0 := wchar(sdw.Process.Pid)
	start := time.Now()

	// Canaries: one put a second whose arrival in the file is timed.
	type canary struct {
		needle []byte
		put    time.Time
	}
	var (
		mu      sync.Mutex
		pending []canary
		lat     []time.Duration
	)
	wctx, wcancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() {
		// Each write is a new file renamed into place: its inode, time
		// and size together tell writes apart (the modification time
		// alone ticks in milliseconds, and a freed inode may be reused).
		var last fileID
		for wctx.Err() == nil || func() bool { mu.Lock(); defer mu.Unlock(); return len(pending) > 0 }() {
			time.Sleep(10 * time.Millisecond)
			fi, err := os.Stat(file)
			if err != nil || idOf(fi) == last {
				if time.Since(start) > b.window+30*time.Second {
					return
				}
				continue
			}
			mu.Lock()
			waiting := len(pending) > 0
			mu.Unlock()
			if !waiting {
				last = idOf(fi)
				continue
			}
			f, err := os.Open(file)
			if err != nil {
				continue
			}
			st, err := f.Stat()
			data, rerr := io.ReadAll(f)
			f.Close()
			if err != nil || rerr != nil {
				continue
			}
			last = idOf(st)
			now := time.Now()
			mu.Lock()
			pending = slices.DeleteFunc(pending, func(c canary) bool {
				if bytes.Contains(data, c.needle) {
					lat = append(lat, now.Sub(c.put))
					return true
				}
				return false
			})
			mu.Unlock()
		}
	})

	if b.profile != "" && !slices.Contains(flags, "--output.write-rate=0") {
		// sdwriter's profile in b.profile (.shards with shards),
		// Prometheus' beside it.
		name := b.profile
		if shards > 1 {
			name += ".shards"
		}
		for addr, file := range map[string]string{sdwWeb: name, promWeb: name + ".prometheus"} {
			wg.Go(func() { saveProfile(addr, file, int(b.window.Seconds())*2/3) })
		}
	}
	rng := rand.New(rand.NewPCG(1, uint64(len(b.procs))))
	canaries := map[string]bool{}
	nextCanary := start
	for done := 0; time.Since(start) < b.window && ctx.Err() == nil; {
		due := int(time.Since(start).Seconds() * float64(b.rate))
		if done >= due {
			time.Sleep(2 * time.Millisecond)
			continue
		}
		// A canary is never restarted: it must reach the file.
		i := rng.IntN(len(b.live))
		for canaries[b.live[i]] {
			i = rng.IntN(len(b.live))
		}
		old := b.live[i]
		host := hostOf(old)
		k := b.key(host)
		v, addr := b.value(host)
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		if _, err := b.cli.Delete(cctx, old); err != nil {
			cancel()
			wcancel()
			return nil, err
		}
		isCanary := time.Now().After(nextCanary) && sdfile.Shard(instanceOf(k), shards) == 0
		put := time.Now()
		_, err := b.cli.Put(cctx, k, v)
		cancel()
		if err != nil {
			wcancel()
			return nil, err
		}
		if isCanary {
			mu.Lock()
			pending = append(pending, canary{needle: []byte(`"` + addr + `"`), put: put})
			canaries[k] = true
			mu.Unlock()
			nextCanary = nextCanary.Add(time.Second)
		}
		b.live[i] = k
		done++
		r.restarts = done
	}
	elapsed := time.Since(start).Seconds()
	c1 := [3]float64{cpuSeconds(sdw.Process.Pid), cpuSeconds(prom.Process.Pid), cpuSeconds(b.etcd.Process.Pid)}
	r.bytes = wchar(sdw.Process.Pid) - w0
	m1, err := scrapeMetrics("http://" + sdwWeb + "/metrics")
	if err != nil {
		wcancel()
		return nil, err
	}
	p1, err := scrapeMetrics("http://" + promWeb + "/metrics")
	if err != nil {
		wcancel()
		return nil, err
	}
	wcancel()
	wg.Wait()
	r.sdwCPU, r.promCPU, r.etcdCPU = (c1[0]-c0[0])/elapsed, (c1[1]-c0[1])/elapsed, (c1[2]-c0[2])/elapsed
	r.writes = m1["workersd_sdwriter_output_writes_total"] - m0["workersd_sdwriter_output_writes_total"]
	const scan = `prometheus_sd_file_scan_duration_seconds`
	r.scans = p1[scan+"_count"] - p0[scan+"_count"]
	if r.scans > 0 {
		r.scanMean = (p1[scan+"_sum"] - p0[scan+"_sum"]) / r.scans
	}
	r.scanP99 = p1[scan+`{quantile="0.99"}`]
	mu.Lock()
	r.fileLat = lat
	missed := len(pending)
	mu.Unlock()
	if missed > 0 {
		return nil, fmt.Errorf("%d canaries never reached the file", missed)
	}
	// Prometheus read every write without error and holds every target.
	if e := p1[`prometheus_sd_file_read_errors_total`]; e > 0 {
		return nil, fmt.Errorf("Prometheus failed to read the file %v times", e)
	}
	deadline = time.Now().Add(time.Minute)
	for {
		p, err := scrapeMetrics("http://" + promWeb + "/metrics")
		if err == nil {
			r.discovered = p[`prometheus_sd_discovered_targets{config="workersd",name="scrape"}`]
			if want = b.inShard0(shards); r.discovered == float64(want) {
				break
			}
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("Prometheus holds %v targets a minute after the churn, want %d", r.discovered, want)
		}
		time.Sleep(200 * time.Millisecond)
	}
	slices.Sort(r.fileLat)
	logf("%s: %d restarts in %.0f s; sdwriter %.3f cores, %d writes, %.2f GB written; Prometheus %.3f cores (%.3f at rest), %v file_sd reads of mean %.0f ms; etcd %.3f cores; canary to file p50 %s, max %s",
		mode, r.restarts, elapsed, r.sdwCPU, int(r.writes), r.bytes/1e9, r.promCPU, r.promIdleCPU, r.scans, r.scanMean*1000, r.etcdCPU,
		pctl(r.fileLat, 0.5).Round(time.Millisecond), r.fileLat[len(r.fileLat)-1].Round(time.Millisecond))
	return r, nil
}
