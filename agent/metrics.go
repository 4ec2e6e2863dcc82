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
	apiRequests        *prometheus.CounterVec
}

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
		apiRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "workersd_agent_api_requests_total",
			Help: "API requests, by method and status code.",
		}, []string{"method", "code"}),
	}
	m.deregistrations.WithLabelValues("exited")
	m.deregistrations.WithLabelValues("api")
	if reg != nil {
		for _, c := range []prometheus.Collector{m.workers, m.registrations, m.restored, m.deregistrations, m.exitToRevoke, m.stateWriteFailures, m.apiRequests} {
			if err := reg.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}
