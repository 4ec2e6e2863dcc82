package etcdsd

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the Discoverer's own metrics. Their names carry no prefix: the
// caller chooses one by wrapping the Registerer, for example
// prometheus.WrapRegistererWithPrefix("workersd_sdwriter_", reg) in sdwriter
// or "prometheus_sd_workersd_" inside a Prometheus build.
type Metrics struct {
	reg prometheus.Registerer

	// Reachable is 1 while etcd answers linearizable reads, 0 otherwise.
	Reachable prometheus.Gauge
	// Registrations counts the valid registrations under the prefix,
	// duplicates included.
	Registrations prometheus.Gauge
	// InvalidSkipped counts every malformed entry read (once per write of
	// it) by reason; Invalid is how many are under the prefix now.
	InvalidSkipped *prometheus.CounterVec
	Invalid        *prometheus.GaugeVec
	// Duplicates is how many valid registrations are not emitted because a
	// newer registration has the same address.
	Duplicates prometheus.Gauge
	// WatchRestarts counts watches that ended while the Discoverer ran;
	// Relists counts complete listings after the first.
	WatchRestarts prometheus.Counter
	Relists       prometheus.Counter
	// ListFailures counts listings that did not complete.
	ListFailures prometheus.Counter
}

// Reasons under which invalid registrations are counted: the registrar field
// that failed validation. Anything else is counted as "other", so the label
// stays bounded whatever is written under the prefix.
var invalidReasons = []string{"key", "job", "host", "slot", "value", "address", "scheme", "metrics_path", "pid", "labels", "other"}

// NewMetrics creates the metrics; Register registers them with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		reg: reg,
		Reachable: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "etcd_reachable",
			Help: "Whether etcd answered the last linearizable read (1) or not (0).",
		}),
		Registrations: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "registrations",
			Help: "Valid registrations under the prefix, duplicates included.",
		}),
		InvalidSkipped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "invalid_registrations_skipped_total",
			Help: "Malformed keys or values under the prefix that were skipped, once per write, by the field that failed validation.",
		}, []string{"reason"}),
		Invalid: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "invalid_registrations",
			Help: "Malformed keys or values currently under the prefix, by the field that failed validation.",
		}, []string{"reason"}),
		Duplicates: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "duplicate_registrations_dropped",
			Help: "Valid registrations not emitted because a registration created later has the same address.",
		}),
		WatchRestarts: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "etcd_watch_restarts_total",
			Help: "Watches on the prefix that ended and were started again.",
		}),
		Relists: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "etcd_relists_total",
			Help: "Complete listings of the prefix after the first (after compaction, a closed watch or a rebuilt etcd).",
		}),
		ListFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "etcd_list_failures_total",
			Help: "Listings of the prefix that failed and were retried.",
		}),
	}
	for _, r := range invalidReasons {
		m.InvalidSkipped.WithLabelValues(r)
		m.Invalid.WithLabelValues(r)
	}
	return m
}

func (m *Metrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.Reachable, m.Registrations, m.InvalidSkipped, m.Invalid, m.Duplicates, m.WatchRestarts, m.Relists, m.ListFailures}
}

// Register registers every metric with the Registerer given to NewMetrics;
// a nil Registerer registers nothing. It implements
// discovery.DiscovererMetrics.
func (m *Metrics) Register() error {
	if m.reg == nil {
		return nil
	}
	var errs []error
	for _, c := range m.collectors() {
		errs = append(errs, m.reg.Register(c))
	}
	return errors.Join(errs...)
}

// Unregister undoes Register.
func (m *Metrics) Unregister() {
	if m.reg == nil {
		return
	}
	for _, c := range m.collectors() {
		m.reg.Unregister(c)
	}
}
