package worker

import (
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/exporter-toolkit/web"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.yaml.in/yaml/v2"

	"github.com/workersd/workersd/internal/netaddr"
)

// Defaults for the zero values of Config.
const (
	DefaultEtcdEndpoint       = "127.0.0.1:2379"
	DefaultListenAddress      = ":0"
	DefaultFinalScrapeTimeout = 15 * time.Second
	MetricsPath               = "/metrics"
)

// Config configures a worker. Only Job is required.
type Config struct {
	// Job is the Prometheus job the worker belongs to (the application).
	Job string
	// Host names the machine in the key and the instance label; default
	// os.Hostname().
	Host string

	// EtcdEndpoints default to DefaultEtcdEndpoint (where sdwriter's
	// embedded etcd listens). EtcdConfig may carry TLS and auth.
	EtcdEndpoints []string
	EtcdConfig    clientv3.Config
	// EtcdClient, when set, is used instead of a client built from
	// EtcdEndpoints and EtcdConfig; the worker does not close it.
	EtcdClient *clientv3.Client

	// Prefix of the registrations; registrar.DefaultPrefix when empty.
	Prefix string
	// TTL of the registration lease; registrar.DefaultTTL when zero.
	TTL time.Duration
	// SlotHold keeps the worker's slot from being reused for that long
	// after it stops, so job-wide totals stay exact across restarts.
	// Optional, defaults to registrar.DefaultSlotHold; see
	// registrar.Config.SlotHold.
	SlotHold time.Duration
	// Labels are attached to every series of this worker by the reader.
	Labels map[string]string

	// ListenAddress is where /metrics is served; default ":0", an
	// ephemeral port on every interface.
	ListenAddress string
	// AdvertiseAddress is what Prometheus is told to scrape: "host" (the
	// listener's port is added) or "host:port". Default: the listener's IP
	// when it is bound to one, otherwise the local IP this host uses to
	// reach the first etcd endpoint (so a Prometheus on another host that
	// reaches the same etcd network can reach the worker).
	AdvertiseAddress string
	// WebConfigFile is an exporter-toolkit web configuration (TLS, basic
	// auth); when it enables TLS the registration says https.
	WebConfigFile string

	// FinalScrapeTimeout bounds how long Stop waits for a scrape that
	// begins after Stop was called. nil means DefaultFinalScrapeTimeout;
	// a zero duration disables the wait (new(time.Duration(0))).
	FinalScrapeTimeout *time.Duration

	// TracerMaxAge: see TracerOptions.MaxAge.
	TracerMaxAge time.Duration
	// Now is the tracer's clock; nil means time.Now. For tests.
	Now func() time.Time

	// Logger; nil discards, as everywhere in workersd (docs/DEVELOPING.md):
	// pass hclog.Default().Named("workersd") to see its logs.
	Logger hclog.Logger
}

func (c *Config) setDefaults() error {
	if c.Host == "" {
		h, err := os.Hostname()
		if err != nil {
			return fmt.Errorf("host: not set and os.Hostname failed: %w", err)
		}
		c.Host = h
	}
	if c.EtcdClient != nil {
		c.EtcdEndpoints = c.EtcdClient.Endpoints()
	}
	if len(c.EtcdEndpoints) == 0 {
		c.EtcdEndpoints = []string{DefaultEtcdEndpoint}
	}
	if c.ListenAddress == "" {
		c.ListenAddress = DefaultListenAddress
	}
	if c.FinalScrapeTimeout == nil {
		c.FinalScrapeTimeout = new(DefaultFinalScrapeTimeout)
	}
	if *c.FinalScrapeTimeout < 0 {
		return fmt.Errorf("final scrape timeout %s is negative", *c.FinalScrapeTimeout)
	}
	if c.Logger == nil {
		c.Logger = hclog.NewNullLogger()
	}
	return nil
}

// webScheme validates the web config file and says which scheme it serves.
func webScheme(file string) (string, error) {
	if file == "" {
		return "http", nil
	}
	if err := web.Validate(file); err != nil {
		return "", fmt.Errorf("web config file %s: %w", file, err)
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return "", fmt.Errorf("web config file: %w", err)
	}
	var wc web.Config
	if err := yaml.Unmarshal(b, &wc); err != nil {
		return "", fmt.Errorf("web config file %s: %w", file, err)
	}
	if wc.TLSConfig.IsEnabled() {
		return "https", nil
	}
	return "http", nil
}

// advertiseAddress decides the address registered for ln.
func advertiseAddress(c *Config, ln net.Listener, log hclog.Logger) (string, error) {
	tcp, ok := ln.Addr().(*net.TCPAddr)
	if !ok {
		return "", fmt.Errorf("listener address %s is not TCP", ln.Addr())
	}
	port := strconv.Itoa(tcp.Port)
	if a := c.AdvertiseAddress; a != "" {
		if _, _, err := net.SplitHostPort(a); err == nil {
			return a, nil
		}
		return net.JoinHostPort(strings.Trim(a, "[]"), port), nil
	}
	configured := ""
	if !tcp.IP.IsUnspecified() {
		configured = tcp.IP.String() // bound to one address: that one
	}
	host := netaddr.AdvertiseHost(configured, c.EtcdEndpoints, c.Host, func(ep string, err error) {
		log.Warn("cannot tell which local address reaches etcd; advertising the host name", "endpoint", ep, "error", err)
	})
	return net.JoinHostPort(host, port), nil
}
