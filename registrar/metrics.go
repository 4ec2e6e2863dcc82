package registrar

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are shared by every registrar on one Registerer: a host agent runs
// hundreds of registrations and wants their sums, not a series per worker.
type metrics struct {
	state             *prometheus.GaugeVec
	reregistrations   prometheus.Counter
	keepaliveFailures prometheus.Counter
	losses            *prometheus.CounterVec
	latency           prometheus.Histogram
	claimFailures     *prometheus.CounterVec
}

// claimFailureReasons are the values of
// workersd_registrar_claim_failures_total's reason (failureReason).
var claimFailureReasons = []string{"nospace", "unreachable", "other"}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		state: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "workersd_registrar_registrations",
			Help: "Registrations by state: registered (key in etcd on a live lease) or retrying.",
		}, []string{"state"}),
		reregistrations: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "workersd_registrar_reregistrations_total",
			Help: "Successful claims after a registration was lost.",
		}),
		keepaliveFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "workersd_registrar_keepalive_failures_total",
			Help: "Lease keep-alives that failed: channel closed, TTL <= 0 or lease not found.",
		}),
		losses: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "workersd_registrar_losses_total",
			Help: "Registrations lost, by reason.",
		}, []string{"reason"}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "workersd_registrar_registration_duration_seconds",
			Help:    "Time from the start of a claim to the key being in etcd.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}),
		claimFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "workersd_registrar_claim_failures_total",
			Help: "Claims that failed, by reason: nospace (etcd's NOSPACE alarm: compact, defragment, disarm), unreachable (no answer in time), other.",
		}, []string{"reason"}),
	}
	for _, r := range claimFailureReasons {
		m.claimFailures.WithLabelValues(r)
	}
	for _, s := range []string{"registered", "retrying"} {
		m.state.WithLabelValues(s)
	}
	if reg == nil {
		return m, nil
	}
	var err error
	if m.state, err = registerShared(reg, m.state); err != nil {
		return nil, err
	}
	if m.reregistrations, err = registerShared(reg, m.reregistrations); err != nil {
		return nil, err
	}
	if m.keepaliveFailures, err = registerShared(reg, m.keepaliveFailures); err != nil {
		return nil, err
	}
	if m.losses, err = registerShared(reg, m.losses); err != nil {
		return nil, err
	}
	if m.latency, err = registerShared(reg, m.latency); err != nil {
		return nil, err
	}
	if m.claimFailures, err = registerShared(reg, m.claimFailures); err != nil {
		return nil, err
	}

	return m, nil
}

// registerShared registers c, or returns the collector already registered
// under the same descriptor, so registrars on one Registerer share metrics.
func registerShared[C prometheus.Collector](reg prometheus.Registerer, c C) (C, error) {
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(C); ok {
				return existing, nil
			}
		}
		var zero C
		return zero, fmt.Errorf("register registrar metrics: %w", err)
	}
	return c, nil
}
