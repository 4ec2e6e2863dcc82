package agent

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/workersd/workersd/internal/metricset"
)

// Metrics are the agent's own metrics, its API's connection limits
// included. Their names carry no prefix: the program chooses one by
// wrapping the Registerer (workersd_agent_ in workersd-agent). The
// registrations' own metrics are registrar.Metrics (Config.RegistrarMetrics).
type Metrics struct {
	metricset.Set

	// Workers is the number of live registrations.
	Workers prometheus.Gauge
	// Registrations counts registrations made through the API; Restored
	// those adopted from the state file.
	Registrations prometheus.Counter
	Restored      prometheus.Counter
	// Deregistrations counts registrations ended, by reason.
	Deregistrations *prometheus.CounterVec
	// ExitToRemoval is the time from a worker's exit to its key's removal.
	ExitToRemoval prometheus.Histogram
	// StateWriteFailures and StateFileBad count state file troubles.
	StateWriteFailures prometheus.Counter
	StateFileBad       prometheus.Counter
	// APIRequests by method and code; Refusals of requests for trust.
	APIRequests *prometheus.CounterVec
	Refusals    *prometheus.CounterVec
	// OrphansRemoved by the reconciler, by kind; HoldsDropped for want of
	// space in etcd.
	OrphansRemoved *prometheus.CounterVec
	HoldsDropped   prometheus.Counter
	// Connections open to the API, and those refused at accept (ConnLimiter).
	Connections        prometheus.Gauge
	ConnectionsRefused *prometheus.CounterVec
}

// refusalReasons are the values of Refusals' reason.
var refusalReasons = []string{"foreign_process", "foreign_address", "address_taken", "user_limit", "unauthenticated"}

// NewMetrics creates the metrics; Register (metricset.Set) registers them
// with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Workers: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "workers",
			Help: "Worker processes the agent currently registers.",
		}),
		Registrations: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "registrations_total",
			Help: "Worker processes registered through the API.",
		}),
		Restored: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "restored_total",
			Help: "Registrations adopted from the state file at start.",
		}),
		Deregistrations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "deregistrations_total",
			Help: "Registrations ended, by reason: exited (the process ended) or api.",
		}, []string{"reason"}),
		// The name predates host leases, when a removal was a revoke; kept
		// so that dashboards keep working.
		ExitToRemoval: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "exit_to_revoke_seconds",
			Help:    "Time from noticing a worker's exit to its key being removed from etcd (its lease revoked, or its key deleted from the host lease).",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
		}),
		StateWriteFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "state_write_failures_total",
			Help: "Failed writes of the state file.",
		}),
		StateFileBad: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "state_file_bad_total",
			Help: "State files found unusable at start (torn, another version, unreadable): kept aside, registrations rebuilt from etcd.",
		}),
		APIRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "api_requests_total",
			Help: "API requests, by method (GET, POST, DELETE or other) and status code.",
		}, []string{"method", "code"}),
		Refusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "refusals_total",
			Help: "API requests refused for trust, by reason: foreign_process (another user's process), foreign_address (not this host's), address_taken (registered by another process), user_limit, unauthenticated (no peer credentials or token).",
		}, []string{"reason"}),
		OrphansRemoved: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "orphans_removed_total",
			Help: "Keys (kind=key) and slot holds (kind=hold) found on the host lease without a live registration, and removed; not 0 means a removal failed to know its key.",
		}, []string{"kind"}),
		HoldsDropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "holds_dropped_total",
			Help: "Slot holds deleted with their key because etcd was out of space (NOSPACE refuses the lease a hold moves onto); the slot may be reused before its hold would have ended.",
		}),
		Connections: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "connections",
			Help: "Open connections to the agent's API.",
		}),
		ConnectionsRefused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "connections_refused_total",
			Help: "API connections closed at accept, by reason: caller_limit (the caller's uid, or remote IP on TCP, holds its most open connections) or total_limit (all callers together do).",
		}, []string{"reason"}),
	}
	m.OrphansRemoved.WithLabelValues("key")
	m.OrphansRemoved.WithLabelValues("hold")
	for _, r := range refusalReasons {
		m.Refusals.WithLabelValues(r)
	}
	for _, r := range connRefusalReasons {
		m.ConnectionsRefused.WithLabelValues(r)
	}
	m.Deregistrations.WithLabelValues("exited")
	m.Deregistrations.WithLabelValues("api")
	m.Set = metricset.New(reg,
		m.Workers, m.Registrations, m.Restored, m.Deregistrations, m.ExitToRemoval, m.StateWriteFailures,
		m.StateFileBad, m.APIRequests, m.Refusals, m.OrphansRemoved, m.HoldsDropped, m.Connections, m.ConnectionsRefused)
	return m
}
