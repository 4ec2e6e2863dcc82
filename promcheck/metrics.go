package promcheck

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/workersd/workersd/internal/metricset"
)

// Metrics are the Runner's metrics. Their names carry no prefix: the caller
// chooses one by wrapping the Registerer, as for the other packages.
type Metrics struct {
	metricset.Set

	// Findings is, per server and finding ID, how many findings of that ID
	// the server's last check gave (0 for every ID it did not give, so
	// that an alert on > 0 resolves).
	Findings *prometheus.GaugeVec
	// PendingTargets is, per server, the target problems seen but too
	// recent to be findings yet.
	PendingTargets *prometheus.GaugeVec
	// LastCheck is when each server was last checked, as a Unix time.
	LastCheck *prometheus.GaugeVec
}

// NewMetrics creates the metrics; Register (metricset.Set) registers them
// with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Findings: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "prometheus_check_findings",
			Help: "Findings of the last check of a Prometheus server that reads sdwriter's output, per check (docs/CHECKS.md): 0 when the check found nothing.",
		}, []string{"prometheus", "check", "severity"}),
		PendingTargets: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "prometheus_check_pending_targets",
			Help: "Target problems the last check of a Prometheus server saw that are too recent to be findings (Prometheus may not have caught up with sdwriter's output yet).",
		}, []string{"prometheus"}),
		LastCheck: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "prometheus_check_last_run_timestamp_seconds",
			Help: "When a Prometheus server that reads sdwriter's output was last checked.",
		}, []string{"prometheus"}),
	}
	m.Set = metricset.New(reg, m.Findings, m.PendingTargets, m.LastCheck)
	return m
}

// set records r, a check of server url.
func (m *Metrics) set(url string, r Result) {
	if m == nil {
		return
	}
	n := map[string]int{}
	for _, f := range r.Findings {
		n[f.ID]++
	}
	for _, id := range IDs {
		m.Findings.WithLabelValues(url, id.ID, string(id.Severity)).Set(float64(n[id.ID]))
	}
	m.PendingTargets.WithLabelValues(url).Set(float64(r.Pending))
	m.LastCheck.WithLabelValues(url).Set(float64(r.Checked.UnixNano()) / 1e9)
}
