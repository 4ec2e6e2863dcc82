package registrar

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/workersd/workersd/internal/metricset"
)

// Metrics are the registrar's metrics, shared by every registration given
// them (Config.Metrics): a host agent runs hundreds of registrations and
// wants their sums, not a series per worker. Their names carry no prefix:
// the program chooses one by wrapping the Registerer
// (prometheus.WrapRegistererWithPrefix("workersd_registrar_", reg) in the
// agent and in package worker).
type Metrics struct {
	metricset.Set

	// Registrations by state: registered or retrying.
	Registrations *prometheus.GaugeVec
	// Reregistrations counts claims after a registration was lost.
	Reregistrations prometheus.Counter
	// KeepaliveFailures counts leases lost while held.
	KeepaliveFailures prometheus.Counter
	// Losses counts registrations lost, by reason.
	Losses *prometheus.CounterVec
	// Duration is the time from a claim's start to the key in etcd.
	Duration prometheus.Histogram
	// ClaimFailures counts failed claims by reason (failureReason).
	ClaimFailures *prometheus.CounterVec
}

// claimFailureReasons are the values of ClaimFailures' reason.
var claimFailureReasons = []string{"nospace", "unreachable", "other"}

// NewMetrics creates the metrics; Register (metricset.Set) registers them
// with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Registrations: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "registrations",
			Help: "Registrations by state: registered (key in etcd on a live lease) or retrying.",
		}, []string{"state"}),
		Reregistrations: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "reregistrations_total",
			Help: "Successful claims after a registration was lost.",
		}),
		KeepaliveFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "keepalive_failures_total",
			Help: "Leases lost while a registration was held: keep-alive failed or closed, TTL <= 0, or the shared lease lost.",
		}),
		Losses: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "losses_total",
			Help: "Registrations lost, by reason.",
		}, []string{"reason"}),
		Duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "registration_duration_seconds",
			Help:    "Time from the start of a claim to the key being in etcd.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}),
		ClaimFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "claim_failures_total",
			Help: "Claims that failed, by reason: nospace (etcd's NOSPACE alarm: compact, defragment, disarm), unreachable (no answer in time), other.",
		}, []string{"reason"}),
	}
	for _, r := range claimFailureReasons {
		m.ClaimFailures.WithLabelValues(r)
	}
	for _, s := range []string{"registered", "retrying"} {
		m.Registrations.WithLabelValues(s)
	}
	m.Set = metricset.New(reg, m.Registrations, m.Reregistrations, m.KeepaliveFailures, m.Losses, m.Duration, m.ClaimFailures)
	return m
}
