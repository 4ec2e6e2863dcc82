package agent

import (
	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	workers            prometheus.Gauge
	registrations      prometheus.Counter
	restored           prometheus.Counter
	deregistrations    *prometheus.CounterVec
	exitToRevoke       prometheus.Histogram
	stateWriteFailures prometheus.Counter
	stateFileBad       prometheus.Counter
	apiRequests        *prometheus.CounterVec
	refusals           *prometheus.CounterVec
	orphansRemoved     *prometheus.CounterVec
	holdsDropped       prometheus.Counter
}

// refusalReasons are the values of workersd_agent_refusals_total's reason.
var refusalReasons = []string{"foreign_process", "foreign_address", "address_taken", "user_limit", "unauthenticated"}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		workers: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "workersd_agent_workers",
			Help: "Worker processes the agent currently registers.",
		}),
		registrations: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "workersd_agent_registrations_total",
			Help: "Worker processes registered through the API.",
		}),
		restored: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "workersd_agent_restored_total",
			Help: "Registrations adopted from the state file at start.",
		}),
		deregistrations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "workersd_agent_deregistrations_total",
			Help: "Registrations revoked, by reason: exited (the process ended) or api.",
		}, []string{"reason"}),
		exitToRevoke: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "workersd_agent_exit_to_revoke_seconds",
			Help:    "Time from noticing a worker's exit to its lease being revoked.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
		}),
		stateWriteFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "workersd_agent_state_write_failures_total",
			Help: "Failed writes of the state file.",
		}),
		stateFileBad: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "workersd_agent_state_file_bad_total",
			Help: "State files found unusable at start (torn, another version, unreadable): kept aside, registrations rebuilt from etcd.",
		}),
		apiRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "workersd_agent_api_requests_total",
			Help: "API requests, by method (GET, POST, DELETE or other) and status code.",
		}, []string{"method", "code"}),
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "workersd_agent_refusals_total",
			Help: "API requests refused for trust, by reason: foreign_process (another user's process), foreign_address (not this host's), address_taken (registered by another process), user_limit, unauthenticated (no peer credentials or token).",
		}, []string{"reason"}),
		orphansRemoved: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "workersd_agent_orphans_removed_total",
			Help: "Keys (kind=key) and slot holds (kind=hold) found on the host lease without a live registration, and removed; not 0 means a removal failed to know its key.",
		}, []string{"kind"}),
		holdsDropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "workersd_agent_holds_dropped_total",
			Help: "Slot holds deleted with their key because etcd was out of space (NOSPACE refuses the lease a hold moves onto); the slot may be reused before its hold would have ended.",
		}),
	}
	m.orphansRemoved.WithLabelValues("key")
	m.orphansRemoved.WithLabelValues("hold")
	for _, r := range refusalReasons {
		m.refusals.WithLabelValues(r)
	}
	m.deregistrations.WithLabelValues("exited")
	m.deregistrations.WithLabelValues("api")
	if reg != nil {
		for _, c := range []prometheus.Collector{m.workers, m.registrations, m.restored, m.deregistrations, m.exitToRevoke, m.stateWriteFailures, m.stateFileBad, m.apiRequests, m.refusals, m.orphansRemoved, m.holdsDropped} {
			if err := reg.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}
