package etcdsd

import (
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/config"
	"github.com/prometheus/prometheus/discovery"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"

	"github.com/workersd/workersd/internal/etcdclient"
	"github.com/workersd/workersd/registrar"
)

// SDConfig is the configuration of workersd discovery: where etcd is and
// how to authenticate. It implements discovery.Config, so that a Prometheus
// build that calls Register accepts
//
//	scrape_configs:
//	  - job_name: workers
//	    workersd_sd_configs:
//	      - endpoints: ["etcd-1:2379"]
//
// sdwriter builds its etcd client from the same type (NewClient).
type SDConfig struct {
	Endpoints    []string         `yaml:"endpoints"`
	Prefix       string           `yaml:"prefix,omitempty"`
	Username     string           `yaml:"username,omitempty"`
	Password     config.Secret    `yaml:"password,omitempty"`
	PasswordFile string           `yaml:"password_file,omitempty"`
	TLSConfig    config.TLSConfig `yaml:"tls_config,omitempty"`
}

// DefaultSDConfig holds the defaults that YAML unmarshalling starts from.
var DefaultSDConfig = SDConfig{Prefix: registrar.DefaultPrefix}

var registerOnce sync.Once

// Register makes "workersd_sd_configs" known to Prometheus' configuration
// loader. Nothing registers it implicitly; calling it more than once is
// harmless.
func Register() {
	registerOnce.Do(func() { discovery.RegisterConfig(&SDConfig{}) })
}

// Name implements discovery.Config.
func (*SDConfig) Name() string { return "workersd" }

// UnmarshalYAML applies the defaults and validates.
func (c *SDConfig) UnmarshalYAML(unmarshal func(any) error) error {
	*c = DefaultSDConfig
	type plain SDConfig
	if err := unmarshal((*plain)(c)); err != nil {
		return err
	}
	return c.Validate()
}

// Validate checks the configuration without touching the network or files.
func (c *SDConfig) Validate() error {
	if len(c.Endpoints) == 0 {
		return errors.New("workersd SD: at least one etcd endpoint is required")
	}
	for _, e := range c.Endpoints {
		if strings.TrimSpace(e) == "" {
			return errors.New("workersd SD: empty etcd endpoint")
		}
	}
	if c.Prefix == "" {
		c.Prefix = registrar.DefaultPrefix
	}
	if err := registrar.ValidatePrefix(c.Prefix); err != nil {
		return fmt.Errorf("workersd SD: %w", err)
	}
	if c.Password != "" && c.PasswordFile != "" {
		return errors.New("workersd SD: at most one of password and password_file may be set")
	}
	if (c.Password != "" || c.PasswordFile != "") && c.Username == "" {
		return errors.New("workersd SD: a password needs a username")
	}
	return c.TLSConfig.Validate()
}

// SetDirectory resolves relative file names against dir.
func (c *SDConfig) SetDirectory(dir string) {
	c.TLSConfig.SetDirectory(dir)
	c.PasswordFile = config.JoinDir(dir, c.PasswordFile)
}

// watchWindow is the gRPC stream window of NewClient's clients: four pages
// of a listing (DefaultPageSize values of a few hundred bytes).
const watchWindow = 4 << 20

// NewClient returns an etcd client for this configuration (TLS, user and
// password read from PasswordFile). The caller closes it.
func (c *SDConfig) NewClient() (*clientv3.Client, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	cfg, err := etcdclient.Auth(c.TLSConfig, c.Username, string(c.Password), c.PasswordFile)
	if err != nil {
		return nil, fmt.Errorf("workersd SD: %w", err)
	}
	// Static flow-control windows: with gRPC's dynamic ones, each watch
	// event that arrives alone (a restart every few milliseconds) made the
	// client send a BDP ping and read its ack, two more frames and system
	// calls per event on both sides (docs/PROFILING.md). Large enough for a
	// page of the listing and for a burst of events.
	cfg.DialOptions = append(cfg.DialOptions,
		grpc.WithStaticStreamWindowSize(watchWindow), grpc.WithStaticConnWindowSize(2*watchWindow))
	return etcdclient.New(c.Endpoints, cfg)
}

// NewDiscovererMetrics implements discovery.Config. The metrics are named
// prometheus_sd_workersd_*.
func (*SDConfig) NewDiscovererMetrics(reg prometheus.Registerer, _ discovery.RefreshMetricsInstantiator) discovery.DiscovererMetrics {
	return NewMetrics(prometheus.WrapRegistererWithPrefix("prometheus_sd_workersd_", reg))
}

// NewDiscoverer implements discovery.Config. The Discoverer owns its etcd
// client and closes it when Run returns.
func (c *SDConfig) NewDiscoverer(opts discovery.DiscovererOptions) (discovery.Discoverer, error) {
	m, ok := opts.Metrics.(*Metrics)
	if !ok {
		return nil, fmt.Errorf("workersd SD: metrics of type %T, want *etcdsd.Metrics", opts.Metrics)
	}
	client, err := c.NewClient()
	if err != nil {
		return nil, err
	}
	d, err := New(client, Options{Prefix: c.Prefix, Logger: hclogFromSlog(opts.Logger), Metrics: m})
	if err != nil {
		client.Close()
		return nil, err
	}
	d.owned = true
	return d, nil
}
