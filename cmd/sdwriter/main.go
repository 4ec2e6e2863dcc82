// Command sdwriter turns the worker registrations in etcd into Prometheus
// targets: a file_sd JSON file and the same bytes served as http_sd.
//
// With no --etcd.endpoints it starts an embedded single-member etcd on
// 127.0.0.1:2379, where workers look by default, so one host needs nothing
// else. It serves /metrics (its own), /sd (http_sd), /-/healthy and
// /-/ready on --web.listen-address, by default :9850.
//
// With --prometheus.url it checks, through their HTTP API, that the
// Prometheus servers reading its output are set up for exact totals, and
// shows the findings on its status page, at /api/v1/checks and in its
// metrics. "sdwriter check" runs the same check once, for deploy
// pipelines, on the output of a running sdwriter or of its files.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/alecthomas/kingpin/v2"
	"github.com/alecthomas/units"
	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/common/config"
	"github.com/prometheus/common/version"
	"github.com/prometheus/exporter-toolkit/web"
	"github.com/prometheus/exporter-toolkit/web/kingpinflag"

	"github.com/workersd/workersd/etcdsd"
	"github.com/workersd/workersd/internal/atomicfile"
	"github.com/workersd/workersd/internal/cliflags"
	"github.com/workersd/workersd/internal/daemonmetrics"
	"github.com/workersd/workersd/internal/embedetcd"
	"github.com/workersd/workersd/internal/etcdhealth"
	"github.com/workersd/workersd/internal/hclogslog"
	"github.com/workersd/workersd/internal/netaddr"
	"github.com/workersd/workersd/promcheck"
	"github.com/workersd/workersd/registrar"
	"github.com/workersd/workersd/sdfile"
)

const (
	name = "sdwriter"
	// defaultWebAddress is the port examples/prometheus.yml scrapes.
	defaultWebAddress = ":9850"
	metricsPrefix     = "workersd_sdwriter_"
	shutdownTimeout   = 5 * time.Second
	// maxShards bounds --output.shards: more Prometheus servers than this
	// behind one sdwriter is a typo, not a setup.
	maxShards = 1024
	// minQuota bounds --etcd.embed.quota-backend-bytes: below, a fresh
	// etcd and a few registrations fill it.
	minQuota = 1 << 20
	// minRetention bounds --etcd.embed.compaction-retention: etcd checks
	// every tenth of it.
	minRetention = time.Second
	// minStatusInterval bounds --etcd.status-interval.
	minStatusInterval = 100 * time.Millisecond
	// minCheckInterval bounds --prometheus.check-interval: each check asks
	// a server for all its targets.
	minCheckInterval = time.Second
)

// gcPercent is sdwriter's GOGC unless the environment sets one. Nearly all
// of its heap is the registrations' rendered bytes, which hold no pointers:
// the collector's work per cycle is small and its cycles are rare (a few
// megabytes of garbage a second at 200 restarts a second), while the
// default (100) lets the heap grow to twice what is live, which is what
// sizes sdwriter's memory (docs/PROFILING.md: 250,000 registrations).
const gcPercent = 40

func main() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(gcPercent)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	var code int
	if len(os.Args) > 1 && os.Args[1] == "check" {
		code = runCheck(ctx, os.Args[2:], os.Stdout, os.Stderr)
	} else {
		// sdwriter's work, reading an etcd cluster, is one stream of
		// events: a second processor only adds the cost of handing each
		// event from thread to thread (futex wake-ups, idle processors
		// looking for work), 18 % of its CPU at 200 restarts a second
		// (docs/PROFILING.md). Not with the embedded etcd, which serves
		// every worker from this process.
		if os.Getenv("GOMAXPROCS") == "" && externalEtcd(os.Args[1:]) {
			runtime.GOMAXPROCS(1)
		}
		code = run(ctx, os.Args[1:], os.Stderr)
	}
	stop()
	os.Exit(code)
}

// externalEtcd says whether args name etcd endpoints (the last
// --etcd.endpoints, as kingpin reads it, is not empty), before they are
// parsed: main decides the processors before anything runs.
func externalEtcd(args []string) bool {
	external := false
	for i, a := range args {
		if a == "--" {
			break
		}
		if v, ok := strings.CutPrefix(a, "--etcd.endpoints="); ok {
			external = v != ""
		} else if a == "--etcd.endpoints" && i+1 < len(args) {
			external = args[i+1] != ""
		}
	}
	return external
}

// flags are sdwriter's command line.
type flags struct {
	endpoints   string
	embedListen string
	embedPeer   string
	embedDir    string
	embedPublic bool
	embedQuota  units.Base2Bytes
	embedRetain time.Duration
	statusEvery time.Duration
	sd          etcdsd.SDConfig
	outputFile  string
	shards      int
	writeRate   units.Base2Bytes
	tmpHash     bool
	web         *web.FlagConfig
	log         *cliflags.Log
	prom        promFlags
	checkers    []*promcheck.Checker // one per --prometheus.url
	checkEvery  time.Duration
}

func parseFlags(args []string, stderr io.Writer) (*flags, error) {
	f := &flags{}
	// Parsed below, so that a bad value's error names its flag (kingpin's
	// says "time: invalid duration" and nothing else).
	var embedQuota, embedRetain, statusEvery, checkEvery string
	app := kingpin.New(name, "Writes the worker registrations in etcd as Prometheus file_sd and http_sd targets. 'sdwriter check --help': the one-shot check of the Prometheus servers that read them, for deploy pipelines.")
	app.Version(version.Print(name))
	app.HelpFlag.Short('h')
	app.UsageWriter(stderr)
	app.ErrorWriter(stderr)
	app.Flag("etcd.endpoints", "Comma-separated etcd client endpoints. Empty: start an embedded single-member etcd (--etcd.embed.*).").
		Default("").StringVar(&f.endpoints)
	app.Flag("etcd.embed.listen-address", "Client address of the embedded etcd, where workers register (only without --etcd.endpoints).").
		Default("127.0.0.1:2379").StringVar(&f.embedListen)
	app.Flag("etcd.embed.peer-address", "Peer address of the embedded etcd (only without --etcd.endpoints).").
		Default("127.0.0.1:2380").StringVar(&f.embedPeer)
	app.Flag("etcd.embed.allow-non-loopback", "Let the embedded etcd listen on a non-loopback address. It has no authentication: anyone who reaches it can add and remove targets. For many hosts, run an etcd cluster with TLS and authentication instead (docs/ETCD.md).").BoolVar(&f.embedPublic)
	app.Flag("etcd.embed.data-dir", "Data directory of the embedded etcd (only without --etcd.endpoints).").
		Default("sdwriter.etcd").StringVar(&f.embedDir)
	app.Flag("etcd.embed.quota-backend-bytes", "Quota of the embedded etcd's database: at it, etcd raises the NOSPACE alarm and refuses every write but deletions, so no worker can register, until space is freed and the alarm disarmed (docs/RUNBOOK.md). Compaction and defragmentation keep the database far below it; etcd advises at most 8GiB (only without --etcd.endpoints).").
		Default("2GiB").StringVar(&embedQuota)
	app.Flag("etcd.embed.compaction-retention", "History the embedded etcd keeps: it compacts every retention to the revision of one retention ago, so it holds one to two retentions of changes. A watcher (sdwriter, a worker) away for less than this resumes where it was instead of listing everything again (only without --etcd.endpoints).").
		Default(embedetcd.DefaultCompactionRetention.String()).StringVar(&embedRetain)
	app.Flag("etcd.status-interval", "How often to ask etcd for each endpoint's status (database size, size in use, quota) and for its alarms (NOSPACE, CORRUPT), shown on the status page and in the metrics.").
		Default(etcdhealth.DefaultInterval.String()).StringVar(&statusEvery)
	app.Flag("etcd.prefix", "Key prefix of the registrations.").Default(registrar.DefaultPrefix).StringVar(&f.sd.Prefix)
	cliflags.AddEtcdAuth(app, cliflags.EtcdAuth{TLS: &f.sd.TLSConfig, Username: &f.sd.Username, PasswordFile: &f.sd.PasswordFile})
	app.Flag("output.file", "file_sd JSON file to keep up to date: a regular file (replaced atomically) or a symbolic link to one (the file it points to is replaced, the link stays). Empty: write no file (http_sd on /sd only).").
		Default("workersd.json").StringVar(&f.outputFile)
	app.Flag("output.shards", "Split the targets into this many files (and /sd?shard=k), as hashmod on the instance label splits them, one per Prometheus server of a sharded setup: --output.file /d/workersd.json gives /d/shard-0-of-N/workersd.json to /d/shard-<N-1>-of-N/workersd.json (examples/prometheus.yml).").
		Default("1").IntVar(&f.shards)
	app.Flag("output.write-rate", "While targets keep changing, write large outputs at most at this rate: after writing n bytes over 1MiB, wait (n - 1MiB) / rate (at most 5s) and write every change of the wait at once. Prometheus parses the whole file after each write and hands targets on every 5s. 0: write every change at once.").
		Default(fmt.Sprintf("%dMiB", sdfile.DefaultWriteRate>>20)).BytesVar(&f.writeRate)
	app.Flag("output.tmp-hash", "Give every target __tmp_hash = its instance: the Prometheus Operator's sharding (shards: N) hashes it instead of __address__, which changes at each restart, so a slot's series stay on one shard (docs/KUBERNETES.md). About 25 bytes more per target for Prometheus to parse.").
		BoolVar(&f.tmpHash)
	f.web = kingpinflag.AddFlags(app, defaultWebAddress)
	f.log = cliflags.AddLog(app)
	addPromFlags(app, &f.prom)
	app.Flag("prometheus.check-interval", "How often to check each --prometheus.url server; also at once (at most every 5s) when a shard of the output gets its first target or loses its last.").
		Default(promcheck.DefaultInterval.String()).StringVar(&checkEvery)

	if _, err := app.Parse(args); err != nil {
		return nil, err
	}
	if f.shards < 1 || f.shards > maxShards {
		return nil, fmt.Errorf("--output.shards=%d: want 1 to %d", f.shards, maxShards)
	}
	var err error
	if f.embedQuota, err = units.ParseBase2Bytes(embedQuota); err != nil {
		return nil, fmt.Errorf("--etcd.embed.quota-backend-bytes=%s: want a size such as 512MiB or 2GiB", embedQuota)
	}
	if f.embedRetain, err = time.ParseDuration(embedRetain); err != nil {
		return nil, fmt.Errorf("--etcd.embed.compaction-retention=%s: want a duration such as 10m", embedRetain)
	}
	if f.statusEvery, err = time.ParseDuration(statusEvery); err != nil {
		return nil, fmt.Errorf("--etcd.status-interval=%s: want a duration such as 15s", statusEvery)
	}
	if f.embedQuota < minQuota {
		return nil, fmt.Errorf("--etcd.embed.quota-backend-bytes=%s: want at least %s (etcd's default is 2GiB)", f.embedQuota, units.Base2Bytes(minQuota))
	}
	if f.embedRetain < minRetention {
		return nil, fmt.Errorf("--etcd.embed.compaction-retention=%s: want at least %s; the embedded etcd must compact, or its database grows with every registration until its quota stops every write", f.embedRetain, minRetention)
	}
	if f.statusEvery < minStatusInterval {
		return nil, fmt.Errorf("--etcd.status-interval=%s: want at least %s", f.statusEvery, minStatusInterval)
	}
	if f.writeRate < 0 {
		return nil, fmt.Errorf("--output.write-rate=%s: want a size per second, 0 to write every change at once", f.writeRate)
	}
	if f.checkEvery, err = time.ParseDuration(checkEvery); err != nil || f.checkEvery < minCheckInterval {
		return nil, fmt.Errorf("--prometheus.check-interval=%s: want a duration of at least %s, such as 1m", checkEvery, minCheckInterval)
	}
	if f.checkers, err = f.prom.checkers(); err != nil {
		return nil, err
	}
	if err := registrar.ValidatePrefix(f.sd.Prefix); err != nil {
		return nil, fmt.Errorf("--etcd.prefix: %w", err)
	}
	if f.sd.Endpoints = cliflags.Endpoints(f.endpoints); len(f.sd.Endpoints) == 0 {
		if !f.embedPublic {
			for flag, addr := range map[string]string{"--etcd.embed.listen-address": f.embedListen, "--etcd.embed.peer-address": f.embedPeer} {
				if err := netaddr.CheckLoopback(addr); err != nil {
					return nil, fmt.Errorf("%s: %w; the embedded etcd has no authentication (--etcd.embed.allow-non-loopback to insist)", flag, err)
				}
			}
		}
		if f.sd.TLSConfig != (config.TLSConfig{}) || f.sd.Username != "" || f.sd.PasswordFile != "" {
			return nil, errors.New("--etcd.cacert, --etcd.cert, --etcd.key, --etcd.username and --etcd.password-file need --etcd.endpoints; the embedded etcd serves plain HTTP without authentication")
		}
		return f, nil // the embedded etcd
	}
	if err := f.sd.Validate(); err != nil {
		return nil, err
	}
	return f, nil
}

// run is sdwriter until ctx is done; it returns the exit code.
func run(ctx context.Context, args []string, stderr io.Writer) int {
	f, err := parseFlags(args, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "%s: error: %v, try --help\n", name, err)
		return 2
	}
	logger := f.log.Logger(name, stderr)
	if err := serve(ctx, f, logger); err != nil {
		logger.Error("exiting", "error", err)
		return 1
	}
	return 0
}

func serve(ctx context.Context, f *flags, logger hclog.Logger) error {
	logger.Info("starting", "version", version.Info(), "build", version.BuildContext())
	// What Prometheus' file_sd patterns are matched against: the files as
	// given, a symbolic link's own path rather than the file it points to.
	paths, err := absFiles(f.outputFile, f.shards)
	if err != nil {
		return fmt.Errorf("--output.file: %w", err)
	}
	// Refused at start rather than at the first write: a device, FIFO or
	// directory there is a mistake, and replacing it would break the
	// system (/dev/null).
	switch {
	case f.outputFile == "":
	case f.shards == 1:
		out, err := atomicfile.Resolve(f.outputFile)
		if err != nil {
			return fmt.Errorf("--output.file: %w", err)
		}
		if out != f.outputFile {
			logger.Info("--output.file is a symbolic link: writing the file it points to, in its directory", "link", f.outputFile, "file", out)
		}
		f.outputFile = out
	default:
		for k := range f.shards {
			file := sdfile.ShardFile(f.outputFile, k, f.shards)
			out, err := atomicfile.Resolve(file)
			if err != nil {
				return fmt.Errorf("--output.file, shard %d: %w", k, err)
			}
			if out != file {
				return fmt.Errorf("--output.file, shard %d: %s is a symbolic link; with --output.shards, point --output.file into the directory instead", k, file)
			}
		}
	}
	ctx, cancelCause := context.WithCancelCause(ctx)
	cancel := func() { cancelCause(nil) }
	defer cancel()

	reg := daemonmetrics.NewRegistry()
	own := prometheus.WrapRegistererWithPrefix(metricsPrefix, reg)

	embedded := len(f.sd.Endpoints) == 0
	if embedded {
		logger.Info("no --etcd.endpoints: starting an embedded single-member etcd; workers on this host reach it with no flags",
			"listen_address", f.embedListen, "peer_address", f.embedPeer, "data_dir", f.embedDir)
		if f.embedPublic {
			logger.Warn("the embedded etcd may listen beyond loopback and has no authentication: anyone who reaches it can add and remove targets")
		}
		etcdMetrics := embedetcd.NewMetrics(own)
		if err := etcdMetrics.Register(); err != nil {
			return err
		}
		srv, err := embedetcd.Start(embedetcd.Config{
			Dir: f.embedDir, ClientAddr: f.embedListen, PeerAddr: f.embedPeer,
			Log:                 logger.Named("etcd"),
			QuotaBackendBytes:   int64(f.embedQuota),
			CompactionRetention: f.embedRetain,
			Metrics:             etcdMetrics,
		})
		if err != nil {
			return err
		}
		defer func() {
			start := time.Now()
			srv.Close()
			logger.Info("embedded etcd stopped", "took", time.Since(start))
		}()
		go func() {
			select {
			case err := <-srv.Err():
				cancelCause(fmt.Errorf("embedded etcd: %w", err))
			case <-ctx.Done():
			}
		}()
		f.sd.Endpoints = []string{srv.Endpoint()}
		logger.Info("embedded etcd is serving", "endpoint", srv.Endpoint(), "quota", units.Base2Bytes(srv.Quota()), "compaction_retention", f.embedRetain)
	}
	client, err := f.sd.NewClient()
	if err != nil {
		return err
	}
	defer client.Close()

	discoveryMetrics := etcdsd.NewMetrics(own)
	fileMetrics := sdfile.NewMetrics(own)
	healthMetrics := etcdhealth.NewMetrics(own)
	if err := errors.Join(discoveryMetrics.Register(), fileMetrics.Register(), healthMetrics.Register()); err != nil {
		return err
	}
	health, err := etcdhealth.New(etcdhealth.Config{Client: client, Endpoints: f.sd.Endpoints, Interval: f.statusEvery,
		Logger: logger.Named("etcdhealth"), Metrics: healthMetrics})
	if err != nil {
		return err
	}

	disc, err := etcdsd.New(client, etcdsd.Options{Prefix: f.sd.Prefix, Logger: logger.Named("etcdsd"), Metrics: discoveryMetrics,
		Target: etcdsd.TargetOptions{TmpHash: f.tmpHash}})
	if err != nil {
		return err
	}
	rate := int64(f.writeRate)
	if rate == 0 {
		rate = -1 // every change at once
	}
	syncer := sdfile.New(sdfile.Options{File: f.outputFile, Shards: f.shards, WriteRate: rate, Logger: logger.Named("sdfile"), Metrics: fileMetrics})
	switch {
	case f.outputFile == "":
		logger.Info("no --output.file: targets are served on /sd only", "shards", f.shards)
	case f.shards > 1:
		logger.Info("writing targets in shards", "files", syncer.Files())
		if _, err := os.Stat(f.outputFile); err == nil {
			logger.Warn("--output.file exists but is no longer written: with --output.shards each shard has its own file; remove it, or a Prometheus reading *.json reads its targets twice", "file", f.outputFile)
		}
	default:
		logger.Info("writing targets", "file", f.outputFile)
	}

	var wg sync.WaitGroup
	defer wg.Wait() // after cancel, before the client closes
	defer cancel()
	wg.Go(func() { syncer.Run(ctx) })
	wg.Go(func() { disc.RunSink(ctx, syncer) })
	wg.Go(func() { health.Run(ctx) })

	var checks *promcheck.Runner
	if len(f.checkers) > 0 {
		m := promcheck.NewMetrics(own)
		if err := m.Register(); err != nil {
			return err
		}
		port := ""
		if addrs := *f.web.WebListenAddresses; len(addrs) > 0 {
			port = promcheck.PortOf(addrs[0])
		}
		checks = promcheck.NewRunner(promcheck.RunnerConfig{
			Checkers: f.checkers,
			Output: func() (promcheck.Output, <-chan struct{}) {
				shards, next := syncer.ShardOutputs()
				return promcheck.Output{Shards: shards, Files: paths, SDPort: port}, next
			},
			Interval: f.checkEvery,
			Logger:   logger.Named("promcheck"),
			Metrics:  m,
		})
		wg.Go(func() {
			// Not before the first listing of etcd is out: against no
			// targets, every target Prometheus still has from before
			// would be one sdwriter does not serve.
			for {
				shards, next := syncer.ShardOutputs()
				if shards[0] != nil {
					break
				}
				select {
				case <-next:
				case <-ctx.Done():
					return
				}
			}
			checks.Run(ctx)
		})
		var urls []string
		for _, c := range f.checkers {
			urls = append(urls, c.URL())
		}
		logger.Info("checking the Prometheus servers that read the output", "prometheus", urls, "interval", f.checkEvery, "files", paths, "sd_port", port)
	}

	st := &status{disc: disc, syncer: syncer, health: health, endpoints: f.sd.Endpoints, embedded: embedded, prefix: f.sd.Prefix,
		shards: f.shards, paths: paths, checks: checks}
	server := &http.Server{Handler: handler(reg, syncer, st), ReadHeaderTimeout: 10 * time.Second}
	serveErr := make(chan error, 1)
	go func() { serveErr <- web.ListenAndServe(server, f.web, hclogslog.New(logger.Named("web"))) }()
	select {
	case err := <-serveErr:
		return fmt.Errorf("web server: %w", err)
	case <-ctx.Done():
	}
	logger.Info("shutting down")
	sctx, scancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer scancel()
	if err := server.Shutdown(sctx); err != nil {
		logger.Warn("web server shutdown", "error", err)
	}
	if err := context.Cause(ctx); !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}

// handler serves sdwriter's web endpoints.
func handler(reg *prometheus.Registry, syncer *sdfile.Syncer, st *status) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.Handle("/sd", syncer)
	// As in Prometheus: profiles of a running sdwriter (docs/PROFILING.md).
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/-/healthy", func(w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, "sdwriter is healthy.\n")
	})
	mux.HandleFunc("/-/ready", func(w http.ResponseWriter, _ *http.Request) {
		if !syncer.Ready() {
			http.Error(w, "sdwriter is not ready: the first listing of etcd is not complete.", http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, "sdwriter is ready.\n")
	})
	// The status page replaces the exporter landing page: the same
	// links, and what sdwriter sees (docs/STATUS.md).
	mux.HandleFunc("/", st.serveHTML)
	mux.HandleFunc("/api/v1/status", st.serveJSON)
	mux.HandleFunc("/api/v1/checks", st.serveChecks)
	return mux
}

// absFiles returns the absolute paths of the files of an output written
// to file in shards (sdfile.ShardFile), none when file is empty.
func absFiles(file string, shards int) ([]string, error) {
	if file == "" {
		return nil, nil
	}
	var paths []string
	for k := range shards {
		p, err := filepath.Abs(sdfile.ShardFile(file, k, shards))
		if err != nil {
			return nil, err
		}
		paths = append(paths, p)
	}
	return paths, nil
}
