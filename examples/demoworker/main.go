// Command demoworker is a worker with no HTTP application of its own: it
// processes units of work from an in-memory queue, the way a queue consumer,
// a cron job or a job-pool child does, and exposes its metrics only through
// the workersd worker package. The quick-start demo and the integration suite
// run it; its flags are kept stable for them.
//
// It prints "listening on HOST:PORT" (the advertised metrics address) on
// standard output once started, and "processed N units" when it stops
// gracefully, after its final scrape. SIGTERM or SIGINT stop it gracefully (final
// scrape, then deregistration); a second signal stops it at once.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/alecthomas/kingpin/v2"
	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"
	promconfig "github.com/prometheus/common/config"

	"github.com/workersd/workersd/internal/cliflags"
	"github.com/workersd/workersd/internal/etcdclient"
	"github.com/workersd/workersd/registrar"
	"github.com/workersd/workersd/worker"
)

func main() {
	app := kingpin.New("demoworker", "A workersd demo worker: processes units of work from an in-memory queue and serves its metrics on an ephemeral port registered in etcd.")
	var (
		endpoints   = app.Flag("etcd.endpoints", "Comma-separated etcd endpoints.").Default(worker.DefaultEtcdEndpoint).String()
		prefix      = app.Flag("etcd.prefix", "Key prefix of the registrations.").Default("/workersd/v1/").String()
		job         = app.Flag("job", "Job name.").Default("demo").String()
		host        = app.Flag("host", "Host name in the registration (default: the machine's host name).").String()
		ttl         = app.Flag("ttl", "Registration lease TTL.").Default("10s").Duration()
		slotHold    = app.Flag("slot-hold", "How long the slot stays taken after this worker stops, as workersd-agent's --slot-hold: at least the scrape interval plus 15s. 0s: reuse at once (totals may miss restarts).").Default(registrar.DefaultSlotHold.String()).Duration()
		listen      = app.Flag("listen-address", "Address of the metrics listener.").Default(worker.DefaultListenAddress).String()
		advertise   = app.Flag("advertise-address", "Address Prometheus should scrape (host or host:port); default: the local address that reaches etcd.").String()
		webConfig   = app.Flag("web.config.file", "exporter-toolkit web configuration (TLS, basic auth).").String()
		labels      = app.Flag("label", "A label of this worker, name=value; repeatable.").StringMap()
		jobs        = app.Flag("jobs", "Process exactly this many units, then idle; 0 means no limit.").Default("0").Int()
		rate        = app.Flag("rate", "Units of work enqueued per second; 0 means as fast as they are processed.").Default("5").Float64()
		jobDuration = app.Flag("job-duration", "How long one unit of work takes.").Default("100ms").Duration()
		finalScrape = app.Flag("final-scrape-timeout", "How long a graceful stop waits for a final scrape; 0 disables the wait.").Default(worker.DefaultFinalScrapeTimeout.String()).Duration()
		logLevel    = app.Flag("log.level", "Log level: debug, info, warn, error.").Default("info").Enum("debug", "info", "warn", "error")
		etcdTLS     promconfig.TLSConfig
		etcdUser    string
		etcdPWFile  string
	)
	cliflags.AddEtcdAuth(app, cliflags.EtcdAuth{TLS: &etcdTLS, Username: &etcdUser, PasswordFile: &etcdPWFile})
	kingpin.MustParse(app.Parse(os.Args[1:]))
	hold, err := cliflags.ZeroIsOff(*slotHold)
	if err != nil {
		fmt.Fprintf(os.Stderr, "demoworker: --slot-hold: %v\n", err)
		os.Exit(2)
	}
	etcdConfig, err := etcdclient.Auth(etcdTLS, etcdUser, "", etcdPWFile)
	if err != nil {
		fmt.Fprintln(os.Stderr, "demoworker: --etcd.*:", err)
		os.Exit(2)
	}

	log := hclog.New(&hclog.LoggerOptions{Name: "demoworker", Level: hclog.LevelFromString(*logLevel), Output: os.Stderr})
	if err := run(log, config{
		worker: worker.Config{
			Job:                *job,
			Host:               *host,
			EtcdEndpoints:      cliflags.Endpoints(*endpoints),
			EtcdConfig:         etcdConfig,
			Prefix:             *prefix,
			TTL:                *ttl,
			SlotHold:           hold,
			Labels:             *labels,
			ListenAddress:      *listen,
			AdvertiseAddress:   *advertise,
			WebConfigFile:      *webConfig,
			FinalScrapeTimeout: finalScrape,
			Logger:             log,
		},
		jobs:        *jobs,
		rate:        *rate,
		jobDuration: *jobDuration,
	}); err != nil {
		log.Error("demoworker failed", "error", err)
		os.Exit(1)
	}
}

type config struct {
	worker      worker.Config
	jobs        int
	rate        float64
	jobDuration time.Duration
}

func run(log hclog.Logger, cfg config) error {
	signals := make(chan os.Signal, 2)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(signals)

	w, err := worker.Start(context.Background(), cfg.worker)
	if err != nil {
		return err
	}
	fmt.Printf("listening on %s\n", w.Addr())

	processed := prometheus.NewCounter(prometheus.CounterOpts{
		Name: "demo_jobs_processed_total",
		Help: "Units of work processed.",
	})
	seconds := prometheus.NewCounter(prometheus.CounterOpts{
		Name: "demo_job_seconds_total",
		Help: "Time spent processing units of work, accounted at every scrape while in flight.",
	})
	queued := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "demo_queue_length",
		Help: "Units of work waiting in the in-memory queue.",
	})
	// A low-rate counter, one increment per lifetime: the kind of series
	// (errors, restarts) people alert on, and the first to lose a restart.
	starts := prometheus.NewCounter(prometheus.CounterOpts{
		Name: "demo_worker_starts_total",
		Help: "Worker processes started: 1 per lifetime.",
	})
	durations := prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "demo_job_duration_seconds",
		Help:    "How long units of work took.",
		Buckets: []float64{.001, .01, .1, 1},
	})
	w.Registry().MustRegister(processed, seconds, queued, starts, durations)
	starts.Inc()

	// The work loop stops taking units as soon as Stop is requested, so the
	// final scrape reads a total that no longer moves.
	workCtx, stopWork := context.WithCancel(context.Background())
	queue := make(chan struct{}, 1000)
	var units atomic.Int64 // what processed counts, for the exit line
	producerDone := make(chan struct{})
	consumerDone := make(chan struct{})
	go func() {
		defer close(producerDone)
		produce(workCtx, queue, queued, cfg.jobs, cfg.rate)
	}()
	go func() {
		defer close(consumerDone)
		for {
			select {
			case <-workCtx.Done():
				return
			case <-queue:
				queued.Dec()
			}
			u := w.Tracer().Start(workCtx, seconds)
			if cfg.jobDuration > 0 {
				t := time.NewTimer(cfg.jobDuration)
				select {
				case <-t.C:
				case <-workCtx.Done():
					t.Stop()
					u.End()
					return // interrupted: not processed
				}
			}
			durations.Observe(u.End().Seconds())
			processed.Inc()
			units.Add(1)
		}
	}()

	sig := <-signals
	log.Info("stopping: waiting for a final scrape; signal again to stop at once", "signal", sig.String())
	stopWork()
	<-producerDone
	<-consumerDone
	stopCtx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case sig := <-signals:
			log.Warn("second signal: stopping at once", "signal", sig.String())
			cancel()
		case <-stopCtx.Done():
		}
	}()
	err = w.Stop(stopCtx)
	// The work loop has ended: this is the count the final scrape read.
	fmt.Printf("processed %d units\n", units.Load())
	if err != nil && stopCtx.Err() == nil {
		return err
	}
	return nil
}

// produce enqueues units of work: at most n (0: no limit), rate per second
// (0: as fast as the queue takes them).
func produce(ctx context.Context, queue chan<- struct{}, queued prometheus.Gauge, n int, rate float64) {
	var tick <-chan time.Time
	if rate > 0 {
		t := time.NewTicker(time.Duration(float64(time.Second) / rate))
		defer t.Stop()
		tick = t.C
	}
	for i := 0; n == 0 || i < n; i++ {
		if tick != nil {
			select {
			case <-tick:
			case <-ctx.Done():
				return
			}
		}
		queued.Inc()
		select {
		case queue <- struct{}{}:
		case <-ctx.Done():
			queued.Dec()
			return
		}
	}
}
