package etcdsd

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/prometheus/discovery"
	"github.com/prometheus/prometheus/discovery/targetgroup"
	"go.yaml.in/yaml/v2"

	"github.com/workersd/workersd/internal/testing/etcdtest"
	"github.com/workersd/workersd/registrar"
)

func TestSDConfigYAML(t *testing.T) {
	Register()
	Register() // harmless twice

	var cfgs discovery.Configs
	err := yaml.UnmarshalStrict([]byte(`
workersd_sd_configs:
  - endpoints: ["127.0.0.1:2379"]
    username: prom
    password_file: secret
    tls_config:
      ca_file: ca.pem
`), &cfgs)
	if err != nil {
		t.Fatal(err)
	}
	if len(cfgs) != 1 {
		t.Fatalf("configs %v", cfgs)
	}
	c := cfgs[0].(*SDConfig)
	if c.Prefix != registrar.DefaultPrefix || c.Username != "prom" {
		t.Errorf("config %+v", c)
	}
	cfgs.SetDirectory("/etc/prometheus")
	if c.PasswordFile != "/etc/prometheus/secret" || c.TLSConfig.CAFile != "/etc/prometheus/ca.pem" {
		t.Errorf("relative paths not resolved: %q %q", c.PasswordFile, c.TLSConfig.CAFile)
	}

	for _, bad := range []string{
		`workersd_sd_configs: [{}]`,
		`workersd_sd_configs: [{endpoints: [a], prefix: "no-slash"}]`,
		`workersd_sd_configs: [{endpoints: [a], username: u, password: p, password_file: f}]`,
		`workersd_sd_configs: [{endpoints: [a], password: p}]`,
		`workersd_sd_configs: [{endpoints: [a], unknown: 1}]`,
	} {
		if err := yaml.UnmarshalStrict([]byte(bad), &cfgs); err == nil {
			t.Errorf("accepted %s", bad)
		}
	}
}

// What a Prometheus build does with the config: metrics, NewDiscoverer, Run.
func TestSDConfigDiscoverer(t *testing.T) {
	etcd := etcdtest.Start(t)
	put(t, etcd.Client(t), "j/h/0", "h:1")
	c := &SDConfig{Endpoints: []string{etcd.Endpoint()}}
	reg := prometheus.NewRegistry()
	m := c.NewDiscovererMetrics(reg, nil)
	if err := m.Register(); err != nil {
		t.Fatal(err)
	}
	defer m.Unregister()
	d, err := c.NewDiscoverer(discovery.DiscovererOptions{Logger: slog.New(slog.NewTextHandler(testWriter{t}, nil)), Metrics: m})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	up := make(chan []*targetgroup.Group)
	done := make(chan struct{})
	go func() { d.Run(ctx, up); close(done) }()
	select {
	case groups := <-up:
		if len(groups) != 1 || groups[0].Labels["instance"] != "h/0" {
			t.Errorf("first send %v", groups)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("nothing sent")
	}
	cancel()
	<-done

	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, mf := range mfs {
		names = append(names, mf.GetName())
	}
	if !strings.Contains(strings.Join(names, " "), "prometheus_sd_workersd_etcd_reachable") {
		t.Errorf("metrics %v", names)
	}
	if _, err := (&SDConfig{}).NewDiscoverer(discovery.DiscovererOptions{Metrics: m}); err == nil {
		t.Error("NewDiscoverer without endpoints succeeded")
	}
}
