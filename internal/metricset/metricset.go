// Package metricset is the one home of how a package's Metrics register:
// each package's Metrics embeds a Set of its collectors, made by NewMetrics
// without registering, so that the program registers them (Register) on
// the Registerer it chose, wrapped with its prefix, and an owner that goes
// away before the program unregisters them (Unregister).
// docs/DEVELOPING.md, "Metrics".
package metricset

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// Set is collectors registered and unregistered together on one
// Registerer. The zero Set has none and registers nothing.
type Set struct {
	reg        prometheus.Registerer
	collectors []prometheus.Collector
}

// New returns the Set of cs on reg; a nil reg registers nothing.
func New(reg prometheus.Registerer, cs ...prometheus.Collector) Set {
	return Set{reg: reg, collectors: cs}
}

// Register registers every collector, the errors joined.
func (s Set) Register() error {
	if s.reg == nil {
		return nil
	}
	var errs []error
	for _, c := range s.collectors {
		errs = append(errs, s.reg.Register(c))
	}
	return errors.Join(errs...)
}

// Unregister undoes Register.
func (s Set) Unregister() {
	if s.reg == nil {
		return
	}
	for _, c := range s.collectors {
		s.reg.Unregister(c)
	}
}
