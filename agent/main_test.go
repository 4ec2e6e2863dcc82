package agent

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/workersd/workersd/internal/testing/leaktest"
	"github.com/workersd/workersd/registrar"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Every goroutine has an owner that stops it and waits for it: none may
// outlive the tests (the etcd members and clients the tests start are
// stopped by then).
func TestMain(m *testing.M) { leaktest.VerifyTestMain(m) }

// hostLease and hostHoldLease are the host's current leases of keys and
// holds.
func (a *Agent) hostLease() clientv3.LeaseID {
	k, _ := a.host.IDs()
	return k
}

func (a *Agent) hostHoldLease() clientv3.LeaseID {
	_, h := a.host.IDs()
	return h
}

// agentMetricsOn and registrarMetricsOn register the agent's and the
// registrations' metrics on reg with their prefixes, as workersd-agent
// does.
func agentMetricsOn(t testing.TB, reg prometheus.Registerer) *Metrics {
	t.Helper()
	m := NewMetrics(prometheus.WrapRegistererWithPrefix("workersd_agent_", reg))
	if err := m.Register(); err != nil {
		t.Fatal(err)
	}
	return m
}

func registrarMetricsOn(t testing.TB, reg prometheus.Registerer) *registrar.Metrics {
	t.Helper()
	m := registrar.NewMetrics(prometheus.WrapRegistererWithPrefix("workersd_registrar_", reg))
	if err := m.Register(); err != nil {
		t.Fatal(err)
	}
	return m
}

// withMetrics sets a Config's metrics, registered on reg.
func withMetrics(t testing.TB, reg prometheus.Registerer) func(*Config) {
	return func(c *Config) {
		c.Metrics, c.RegistrarMetrics = agentMetricsOn(t, reg), registrarMetricsOn(t, reg)
	}
}
