package worker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/workersd/workersd/internal/embedetcd"
	"github.com/workersd/workersd/internal/testing/etcdtest"
	"github.com/workersd/workersd/registrar"
)

func testLogger(t testing.TB) hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{Name: t.Name(), Level: hclog.Warn, Output: io.Discard})
}

func startWorker(t testing.TB, cfg Config) *Worker {
	t.Helper()
	if cfg.Job == "" {
		cfg.Job = "test"
	}
	if cfg.Host == "" {
		cfg.Host = "host-1"
	}
	if cfg.ListenAddress == "" {
		cfg.ListenAddress = "127.0.0.1:0"
	}
	if cfg.Logger == nil {
		cfg.Logger = testLogger(t)
	}
	w, err := Start(context.Background(), cfg)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithCancel(context.Background())
		cancel() // at once: tests that care stop the worker themselves
		w.Stop(ctx)
	})
	return w
}

// scrape fetches w's metrics, as Prometheus does (the registered path),
// and returns the parsed families.
func scrape(t testing.TB, w *Worker) map[string]float64 {
	t.Helper()
	resp, err := http.Get("http://" + w.Addr() + w.MetricsPath())
	if err != nil {
		t.Fatalf("scrape: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("scrape: %s", resp.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parse scrape: %v", err)
	}
	out := map[string]float64{}
	for name, mf := range mfs {
		for _, m := range mf.GetMetric() {
			switch {
			case m.Counter != nil:
				out[name] += m.GetCounter().GetValue()
			case m.Gauge != nil:
				out[name] += m.GetGauge().GetValue()
			default:
				out[name] = 1
			}
		}
	}
	return out
}

func getKey(t testing.TB, c *clientv3.Client, key string) *registrar.Registration {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := c.Get(ctx, key)
	if err != nil {
		t.Fatalf("get %s: %v", key, err)
	}
	if len(resp.Kvs) == 0 {
		return nil
	}
	r, err := registrar.Decode(registrar.DefaultPrefix, resp.Kvs[0].Key, resp.Kvs[0].Value)
	if err != nil {
		t.Fatalf("decode %s: %v", key, err)
	}
	return &r
}

func TestStartServesAndRegisters(t *testing.T) {
	etcd := etcdtest.Start(t)
	cli := etcd.Client(t)
	w := startWorker(t, Config{
		EtcdEndpoints: []string{etcd.Endpoint()},
		ListenAddress: ":0",
		Labels:        map[string]string{"version": "1.4.2"},
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := w.WaitRegistered(ctx); err != nil {
		t.Fatal(err)
	}
	// Listening on every interface, etcd on loopback: the advertised host
	// is the loopback address that reaches etcd.
	if !strings.HasPrefix(w.Addr(), "127.0.0.1:") {
		t.Fatalf("Addr = %s, want 127.0.0.1:<port>", w.Addr())
	}
	st := w.Registration()
	reg := getKey(t, cli, st.Key)
	if reg == nil {
		t.Fatalf("key %s not in etcd", st.Key)
	}
	if reg.Address != w.Addr() || reg.Job != "test" || reg.Host != "host-1" || reg.PID != os.Getpid() || reg.Labels["version"] != "1.4.2" {
		t.Fatalf("registration = %+v, want address %s, job test, host host-1, our pid, label version", reg, w.Addr())
	}

	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "app_things_total", Help: "h"})
	w.Registry().MustRegister(c)
	c.Add(3)
	m := scrape(t, w)
	for _, name := range []string{"go_goroutines", "process_cpu_seconds_total", "workersd_registrar_registrations", "workersd_tracer_units_in_flight"} {
		if _, ok := m[name]; !ok {
			t.Errorf("%s not served", name)
		}
	}
	if m["app_things_total"] != 3 {
		t.Errorf("app_things_total = %v, want 3", m["app_things_total"])
	}

	// OpenMetrics is negotiated.
	req, _ := http.NewRequest("GET", "http://"+w.Addr()+MetricsPath, nil)
	req.Header.Set("Accept", "application/openmetrics-text;version=1.0.0")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/openmetrics-text") || !strings.HasSuffix(strings.TrimSpace(string(body)), "# EOF") {
		t.Errorf("OpenMetrics not negotiated: Content-Type %q", ct)
	}
}

// keyProbe is a collector that, while a scrape gathers, records whether the
// worker's key is still in etcd: the final scrape must see it.
type keyProbe struct {
	cli     *clientv3.Client
	key     atomic.Value // string
	present atomic.Int32 // scrapes that saw the key
	absent  atomic.Int32 // scrapes that did not
}

func (p *keyProbe) Describe(chan<- *prometheus.Desc) {}

func (p *keyProbe) Collect(chan<- prometheus.Metric) {
	key, _ := p.key.Load().(string)
	if key == "" {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := p.cli.Get(ctx, key, clientv3.WithCountOnly())
	if err == nil && resp.Count == 1 {
		p.present.Add(1)
	} else {
		p.absent.Add(1)
	}
}

// A worker that counts 1,000 units and is stopped right after loses none:
// the scrape that begins after Stop reads all 1,000 while the key is still in
// etcd, and only then is the key revoked and the listener closed.
func TestFinalScrapeReadsEverything(t *testing.T) {
	etcd := etcdtest.Start(t)
	cli := etcd.Client(t)
	w := startWorker(t, Config{
		EtcdEndpoints:      []string{etcd.Endpoint()},
		FinalScrapeTimeout: new(time.Minute),
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := w.WaitRegistered(ctx); err != nil {
		t.Fatal(err)
	}
	key := w.Registration().Key
	probe := &keyProbe{cli: cli}
	probe.key.Store(key)
	units := prometheus.NewCounter(prometheus.CounterOpts{Name: "units_processed_total", Help: "h"})
	seconds := prometheus.NewCounter(prometheus.CounterOpts{Name: "units_seconds_total", Help: "h"})
	w.Registry().MustRegister(units, seconds, probe)

	// A scrape before the work: what Prometheus last saw.
	if got := scrape(t, w)["units_processed_total"]; got != 0 {
		t.Fatalf("before: %v", got)
	}
	var wg sync.WaitGroup
	for range 1000 {
		wg.Go(func() {
			u := w.Tracer().Start(context.Background(), seconds)
			units.Inc()
			u.End()
		})
	}
	wg.Wait()

	stopErr := make(chan error, 1)
	go func() { stopErr <- w.Stop(context.Background()) }()
	<-w.Stopping()
	select {
	case err := <-stopErr:
		t.Fatalf("Stop returned before the final scrape: %v", err)
	default:
	}
	probe.present.Store(0)
	probe.absent.Store(0)
	if got := scrape(t, w)["units_processed_total"]; got != 1000 {
		t.Fatalf("final scrape read %v, want 1000", got)
	}
	if probe.present.Load() != 1 || probe.absent.Load() != 0 {
		t.Fatalf("final scrape: key present in %d, absent in %d gathers; want present", probe.present.Load(), probe.absent.Load())
	}
	select {
	case err := <-stopErr:
		if err != nil {
			t.Fatalf("Stop: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Stop did not return after the final scrape")
	}
	if reg := getKey(t, cli, key); reg != nil {
		t.Fatalf("key %s still in etcd after Stop", key)
	}
	if _, err := net.DialTimeout("tcp", w.ListenAddr().String(), time.Second); err == nil {
		t.Fatal("listener still open after Stop")
	}
}

// With the final-scrape timeout at 0, Stop does not wait for a scrape.
func TestFinalScrapeDisabled(t *testing.T) {
	etcd := etcdtest.Start(t)
	cli := etcd.Client(t)
	w := startWorker(t, Config{
		EtcdEndpoints:      []string{etcd.Endpoint()},
		FinalScrapeTimeout: new(time.Duration(0)),
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := w.WaitRegistered(ctx); err != nil {
		t.Fatal(err)
	}
	key := w.Registration().Key
	// Bounded well below any final-scrape wait: a wait would fail it.
	sctx, scancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer scancel()
	if err := w.Stop(sctx); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if reg := getKey(t, cli, key); reg != nil {
		t.Fatalf("key %s still in etcd after Stop", key)
	}
}

// An expired context stops at once even with a long final-scrape timeout;
// a second Stop returns the first one's result.
func TestStopExpiredContext(t *testing.T) {
	etcd := etcdtest.Start(t)
	w := startWorker(t, Config{
		EtcdEndpoints:      []string{etcd.Endpoint()},
		FinalScrapeTimeout: new(time.Hour),
	})
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		<-w.Stopping()
		cancel() // the application's second signal
	}()
	done := make(chan error, 1)
	go func() { done <- w.Stop(ctx) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("Stop with a cancelled context is still waiting")
	}
	if _, err := net.DialTimeout("tcp", w.ListenAddr().String(), time.Second); err == nil {
		t.Fatal("listener still open after Stop")
	}
	again := make(chan struct{})
	go func() { w.Stop(context.Background()); close(again) }()
	select {
	case <-again:
	case <-time.After(30 * time.Second):
		t.Fatal("second Stop blocked")
	}
}

// With etcd unreachable the worker starts, serves /metrics and the
// application's work is counted; once etcd is started on that address the
// registration appears.
func TestEtcdUnreachableAtStart(t *testing.T) {
	etcdAddr := etcdtest.FreeAddr(t)
	w := startWorker(t, Config{EtcdEndpoints: []string{etcdAddr}, FinalScrapeTimeout: new(time.Duration(0))})
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "app_work_total", Help: "h"})
	w.Registry().MustRegister(c)
	for i := 1; i <= 3; i++ {
		c.Inc()
		if got := scrape(t, w)["app_work_total"]; got != float64(i) {
			t.Fatalf("scrape %d: app_work_total = %v", i, got)
		}
	}
	if w.Registration().Registered {
		t.Fatal("registered without etcd")
	}

	srv, err := embedetcd.Start(embedetcd.Config{
		Dir:           filepath.Join(t.TempDir(), "etcd"),
		ClientAddr:    etcdAddr,
		PeerAddr:      etcdtest.FreeAddr(t),
		UnsafeNoFsync: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := w.WaitRegistered(ctx); err != nil {
		t.Fatalf("registration did not appear after etcd started: %v", err)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{etcdAddr}, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	if reg := getKey(t, cli, w.Registration().Key); reg == nil || reg.Address != w.Addr() {
		t.Fatalf("registration in etcd = %+v, want address %s", reg, w.Addr())
	}
	sctx, scancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer scancel()
	if err := w.Stop(sctx); err != nil {
		t.Fatal(err)
	}
}

func TestBadConfig(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	webConfig := filepath.Join(t.TempDir(), "web.yml")
	if err := os.WriteFile(webConfig, []byte("tls_server_config:\n  cert_file: missing.crt\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		cfg   Config
		field string // the registrar.FieldError field, or "" for another error
		want  string // in the message
	}{
		{"missing job", Config{}, "job", "job: must not be empty"},
		{"job with slash", Config{Job: "a/b"}, "job", "must not contain '/'"},
		{"reserved label", Config{Job: "j", Labels: map[string]string{"instance": "x"}}, "labels.instance", "cannot be overridden"},
		{"invalid label name", Config{Job: "j", Labels: map[string]string{"1bad": "x"}}, "labels.1bad", "not a valid label name"},
		{"bad port", Config{Job: "j", ListenAddress: "127.0.0.1:99999"}, "", `listen address "127.0.0.1:99999"`},
		{"port in use", Config{Job: "j", ListenAddress: busy.Addr().String()}, "", "address already in use"},
		{"short ttl", Config{Job: "j", TTL: time.Second}, "ttl", "below etcd's minimum"},
		{"bad advertise address", Config{Job: "j", AdvertiseAddress: "host:0"}, "address", "out of range"},
		{"negative final scrape timeout", Config{Job: "j", FinalScrapeTimeout: new(-time.Second)}, "", "final scrape timeout"},
		{"web config without key", Config{Job: "j", WebConfigFile: webConfig}, "", "web config file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.cfg.Host = "h"
			tc.cfg.EtcdEndpoints = []string{"127.0.0.1:1"}
			tc.cfg.Logger = testLogger(t)
			if tc.cfg.ListenAddress == "" {
				tc.cfg.ListenAddress = "127.0.0.1:0"
			}
			w, err := Start(context.Background(), tc.cfg)
			if err == nil {
				w.Stop(context.Background())
				t.Fatal("Start succeeded")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not contain %q", err, tc.want)
			}
			var fe *registrar.FieldError
			if tc.field != "" && (!errors.As(err, &fe) || fe.Field != tc.field) {
				t.Errorf("error %v: want a FieldError for %q", err, tc.field)
			}
		})
	}
}

func TestAdvertiseAddress(t *testing.T) {
	for _, tc := range []struct {
		listen, advertise string
		want              func(port string) string
	}{
		{"127.0.0.1:0", "", func(p string) string { return "127.0.0.1:" + p }},
		{":0", "", func(p string) string { return "127.0.0.1:" + p }}, // route to etcd on loopback
		{"127.0.0.1:0", "worker.example", func(p string) string { return "worker.example:" + p }},
		{"127.0.0.1:0", "[::1]", func(p string) string { return "[::1]:" + p }},
		{"127.0.0.1:0", "lb.example:443", func(string) string { return "lb.example:443" }},
	} {
		w := startWorker(t, Config{EtcdEndpoints: []string{"http://127.0.0.1:1"}, ListenAddress: tc.listen, AdvertiseAddress: tc.advertise})
		_, port, _ := net.SplitHostPort(w.ListenAddr().String())
		if want := tc.want(port); w.Addr() != want {
			t.Errorf("listen %q advertise %q: Addr = %s, want %s", tc.listen, tc.advertise, w.Addr(), want)
		}
	}
}

func TestAcceptsGzip(t *testing.T) {
	for header, want := range map[string]bool{
		"":                         false,
		"gzip":                     true,
		"identity":                 false,
		"deflate, gzip;q=0.5":      true,
		"gzip;q=0":                 false,
		"GZIP":                     true,
		"br;q=1.0, gzip ; q=0.001": true,
		"x-gzip":                   false,
		"identity, gzip;q=invalid": false,
	} {
		if got := acceptsGzip(header); got != want {
			t.Errorf("acceptsGzip(%q) = %v, want %v", header, got, want)
		}
	}
}

// A scrape is gzipped when asked for, decodes, and carries the process
// metrics but not the namespace-wide network counters.
func TestMetricsGzipAndProcessMetrics(t *testing.T) {
	w := startWorker(t, Config{EtcdEndpoints: []string{etcdtest.FreeAddr(t)}})
	resp, err := http.Get("http://" + w.Addr() + MetricsPath) // asks for gzip, decodes it
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if !resp.Uncompressed {
		t.Fatalf("response not gzipped: headers %v", resp.Header)
	}
	got := scrape(t, w)
	for _, name := range []string{"process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds",
		"process_max_fds", "process_start_time_seconds", "process_virtual_memory_bytes", "go_goroutines"} {
		if _, ok := got[name]; !ok {
			t.Errorf("%s missing from /metrics", name)
		}
	}
	if _, ok := got["process_network_receive_bytes_total"]; ok {
		t.Errorf("process_network_receive_bytes_total is exported; it describes the namespace, not the worker")
	}
	if got["process_resident_memory_bytes"] <= 0 || got["process_start_time_seconds"] <= 0 {
		t.Errorf("implausible process metrics: rss %v start %v", got["process_resident_memory_bytes"], got["process_start_time_seconds"])
	}
}

// The worker registers a metrics path of its own, so that a stale scrape of
// its address after it exited (Prometheus is seconds behind) cannot read
// another process that was given the port: a scrape of another worker's
// path is a 404, /metrics still answers people, and only a scrape of the
// registered path counts as the final scrape.
func TestOwnMetricsPath(t *testing.T) {
	etcd := etcdtest.Start(t)
	cli := etcd.Client(t)
	w := startWorker(t, Config{Job: "ownpath", EtcdEndpoints: []string{etcd.Endpoint()}, FinalScrapeTimeout: new(time.Minute)})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := w.WaitRegistered(ctx); err != nil {
		t.Fatal(err)
	}
	path := w.MetricsPath()
	if !strings.HasPrefix(path, fmt.Sprintf("/metrics/%d-", os.Getpid())) || len(path) < len("/metrics/1-")+16 {
		t.Fatalf("MetricsPath %q: want /metrics/<pid>-<16 hex digits>", path)
	}
	if other := registrar.OwnMetricsPath(os.Getpid()); other == path {
		t.Fatalf("two calls gave the same path %q", path)
	}
	reg := getKey(t, cli, w.Registration().Key)
	if reg == nil || reg.MetricsPath != path {
		t.Fatalf("registered %+v, want metrics_path %q", reg, path)
	}
	for p, want := range map[string]int{path: 200, MetricsPath: 200, registrar.OwnMetricsPath(os.Getpid()): 404} {
		resp, err := http.Get("http://" + w.Addr() + p)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("GET %s: %d, want %d", p, resp.StatusCode, want)
		}
	}

	stopped := make(chan error, 1)
	go func() { stopped <- w.Stop(context.Background()) }()
	<-w.Stopping()
	resp, err := http.Get("http://" + w.Addr() + MetricsPath)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	select {
	case err := <-stopped:
		t.Fatalf("a scrape of /metrics ended Stop's wait for the final scrape (%v)", err)
	case <-time.After(200 * time.Millisecond):
	}
	scrape(t, w)
	select {
	case err := <-stopped:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Stop did not return after a scrape of the registered path")
	}
}
