package worker

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/exporter-toolkit/web"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/workersd/workersd/internal/etcdclient"
	"github.com/workersd/workersd/internal/hclogslog"
	"github.com/workersd/workersd/registrar"
)

// Worker is a running metrics endpoint and its registration.
type Worker struct {
	cfg       Config
	log       hclog.Logger
	reg       *prometheus.Registry
	gatherer  prometheus.Gatherer
	tracer    *Tracer
	ln        net.Listener
	srv       *http.Server
	addr      string
	path      string // the registered metrics path, this process' own
	client    *clientv3.Client
	ownClient bool
	registrar *registrar.Registrar

	serveDone chan struct{}
	serveErr  error

	mu          sync.Mutex
	stopStarted bool
	stopping    chan struct{} // closed when Stop is called
	finalScrape chan struct{} // closed once a scrape that began after Stop was delivered
	finalOnce   sync.Once
	stopped     chan struct{} // closed when Stop has finished
	stopErr     error
}

// Start opens the metrics listener, then starts registering in the
// background. It never waits for etcd: with etcd down the application runs,
// /metrics is served and the registration appears once etcd answers. Bad
// configuration (a missing job, invalid labels, an address that cannot be
// listened on) is returned as an error naming the field; registrar
// validation errors are *registrar.FieldError.
//
// ctx bounds nothing that blocks; its values (not its cancellation) reach the
// registration loop, which lives until Stop.
func Start(ctx context.Context, cfg Config) (_ *Worker, err error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, fmt.Errorf("worker: %w", err)
	}
	log := cfg.Logger
	// Validate what needs no resources before opening any.
	if err := registrar.ValidateName("job", cfg.Job); err != nil {
		return nil, fmt.Errorf("worker: %w", err)
	}
	if err := registrar.ValidateLabels(cfg.Labels); err != nil {
		return nil, fmt.Errorf("worker: %w", err)
	}
	scheme, err := webScheme(cfg.WebConfigFile)
	if err != nil {
		return nil, fmt.Errorf("worker: %w", err)
	}

	w := &Worker{
		cfg:         cfg,
		log:         log,
		reg:         prometheus.NewRegistry(),
		serveDone:   make(chan struct{}),
		stopping:    make(chan struct{}),
		finalScrape: make(chan struct{}),
		stopped:     make(chan struct{}),
	}
	var cleanup []func()
	defer func() {
		if err != nil {
			for i := len(cleanup) - 1; i >= 0; i-- {
				cleanup[i]()
			}
		}
	}()

	proc, perr := newProcessCollector()
	if perr != nil { // no /proc: client_golang's collector knows other systems
		proc = collectors.NewProcessCollector(collectors.ProcessCollectorOpts{})
	}
	w.reg.MustRegister(collectors.NewGoCollector(), proc)
	// The program's prefixes: package worker is the program here.
	tracerMetrics := NewTracerMetrics(prometheus.WrapRegistererWithPrefix("workersd_tracer_", w.reg))
	registrarMetrics := registrar.NewMetrics(prometheus.WrapRegistererWithPrefix("workersd_registrar_", w.reg))
	if err := errors.Join(tracerMetrics.Register(), registrarMetrics.Register()); err != nil {
		return nil, fmt.Errorf("worker: register its metrics: %w", err)
	}
	w.tracer, err = NewTracer(TracerOptions{Now: cfg.Now, MaxAge: cfg.TracerMaxAge, Metrics: tracerMetrics})
	if err != nil {
		return nil, fmt.Errorf("worker: %w", err)
	}
	w.gatherer = w.tracer.Gatherer(w.reg)

	w.ln, err = net.Listen("tcp", cfg.ListenAddress)
	if err != nil {
		return nil, fmt.Errorf("worker: listen address %q: %w", cfg.ListenAddress, err)
	}
	cleanup = append(cleanup, func() { w.ln.Close() })
	w.addr, err = advertiseAddress(&w.cfg, w.ln, log)
	if err != nil {
		return nil, fmt.Errorf("worker: %w", err)
	}

	if cfg.EtcdClient != nil {
		w.client = cfg.EtcdClient
	} else {
		w.client, err = etcdclient.New(cfg.EtcdEndpoints, cfg.EtcdConfig)
		if err != nil {
			return nil, fmt.Errorf("worker: %w", err)
		}
		w.ownClient = true
		cleanup = append(cleanup, func() { w.client.Close() })
	}
	w.path = registrar.OwnMetricsPath(os.Getpid())
	w.registrar, err = registrar.New(registrar.Config{
		Client: w.client,
		Prefix: cfg.Prefix,
		Job:    cfg.Job,
		Host:   cfg.Host,
		Value: registrar.Value{
			Address:     w.addr,
			Scheme:      scheme,
			MetricsPath: w.path,
			PID:         os.Getpid(),
			Labels:      cfg.Labels,
		},
		TTL:      cfg.TTL,
		SlotHold: cfg.SlotHold,
		Metrics:  registrarMetrics,
		Logger:   log.Named("registrar"),
	})
	if err != nil {
		return nil, fmt.Errorf("worker: %w", err)
	}

	mux := http.NewServeMux()
	metrics := promhttp.InstrumentMetricHandler(w.reg, gzipFast(promhttp.HandlerFor(w.gatherer, promhttp.HandlerOpts{
		EnableOpenMetrics:  true,
		DisableCompression: true, // gzipFast compresses, at a cheaper level
		ErrorLog:           log.StandardLogger(&hclog.StandardLoggerOptions{ForceLevel: hclog.Error}),
		Registry:           w.reg,
	})))
	// Prometheus scrapes the registered path; /metrics is for people, and
	// does not count as the final scrape.
	mux.Handle(w.path, w.finalScrapeAware(metrics))
	mux.Handle(MetricsPath, metrics)
	w.srv = &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
		ConnContext:       withConn, // the final scrape looks at its socket
		ErrorLog:          log.StandardLogger(&hclog.StandardLoggerOptions{ForceLevel: hclog.Debug}),
	}
	go func() {
		defer close(w.serveDone)
		file := cfg.WebConfigFile
		err := web.Serve(w.ln, w.srv, &web.FlagConfig{
			WebListenAddresses: &[]string{},
			WebSystemdSocket:   new(false),
			WebConfigFile:      &file,
		}, hclogslog.New(log.Named("web")))
		if err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics server failed", "error", err)
			w.serveErr = err
		}
	}()

	w.registrar.Register(ctx)
	log.Info("worker started", "job", cfg.Job, "host", cfg.Host, "address", w.addr, "listen", w.ln.Addr().String())
	return w, nil
}

// Registry is where the application registers its metrics. It already holds
// the Go and process collectors, the tracer's and the registrar's metrics.
func (w *Worker) Registry() *prometheus.Registry { return w.reg }

// Gatherer is what /metrics serves: the registry, gathered after the tracer
// has accounted the in-flight work.
func (w *Worker) Gatherer() prometheus.Gatherer { return w.gatherer }

// Tracer accounts long units of work at every scrape; see Tracer.
func (w *Worker) Tracer() *Tracer { return w.tracer }

// Addr is the advertised address (host:port), the one registered in etcd.
func (w *Worker) Addr() string { return w.addr }

// MetricsPath is the path the worker registered, where Prometheus scrapes
// it (registrar.OwnMetricsPath); it also serves /metrics, whose scrapes do
// not count as the final scrape.
func (w *Worker) MetricsPath() string { return w.path }

// ListenAddr is the address the listener is bound to.
func (w *Worker) ListenAddr() net.Addr { return w.ln.Addr() }

// Registration reports the state of the registration in etcd.
func (w *Worker) Registration() registrar.State { return w.registrar.State() }

// WaitRegistered blocks until the registration is in etcd or ctx ends.
func (w *Worker) WaitRegistered(ctx context.Context) error {
	return w.registrar.WaitRegistered(ctx)
}

// Stopping is closed as soon as Stop is called: an application can stop
// taking new work while the final scrape is awaited.
func (w *Worker) Stopping() <-chan struct{} { return w.stopping }

// Stop shuts the worker down without losing the last increments: it waits
// for one scrape that begins after Stop was called and whose answer the
// scraper received in time (at most the final-scrape timeout; not at all
// when it is zero; see finalScrapeAware), then revokes the registration (the
// target disappears at once), then closes the listener. When ctx ends, Stop
// stops waiting and closes everything at once; the key then expires with its
// lease. Calling Stop again waits for the first call and returns its result.
func (w *Worker) Stop(ctx context.Context) error {
	w.mu.Lock()
	first := !w.stopStarted
	if first {
		w.stopStarted = true
		close(w.stopping)
	}
	w.mu.Unlock()
	if !first {
		select {
		case <-w.stopped:
			return w.stopErr
		case <-ctx.Done():
			return fmt.Errorf("worker stop: %w", ctx.Err())
		}
	}
	w.stopErr = w.stop(ctx)
	close(w.stopped)
	return w.stopErr
}

func (w *Worker) stop(ctx context.Context) error {
	// A worker that was never registered is no target: no scrape will come.
	never := w.registrar.State().Registrations == 0
	if d := *w.cfg.FinalScrapeTimeout; d > 0 && ctx.Err() == nil && !never {
		t := time.NewTimer(d)
		select {
		case <-w.finalScrape:
			w.log.Debug("final scrape delivered")
		case <-t.C:
			w.log.Warn("no scrape within the final-scrape timeout; increments since the last scrape are lost", "timeout", d)
		case <-ctx.Done():
			w.log.Warn("stop: context ended before the final scrape", "error", ctx.Err())
		}
		t.Stop()
	}
	var errs []error
	if err := w.registrar.Deregister(ctx); err != nil {
		errs = append(errs, err)
	}
	// The loop ends at once now; wait for it, so it never outlives the
	// client it uses (Deregister returns early when ctx is done).
	_ = w.registrar.Detach(context.Background())
	if ctx.Err() != nil {
		w.srv.Close()
	} else if err := w.srv.Shutdown(ctx); err != nil {
		w.srv.Close()
		errs = append(errs, fmt.Errorf("close metrics listener: %w", err))
	}
	<-w.serveDone
	w.ln.Close() // Serve closes it too, unless Stop came before Serve began
	if w.serveErr != nil {
		errs = append(errs, fmt.Errorf("metrics server: %w", w.serveErr))
	}
	if w.ownClient {
		w.client.Close()
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("worker stop: %w", err)
	}
	w.log.Info("worker stopped")
	return nil
}
