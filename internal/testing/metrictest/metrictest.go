// Package metrictest reads metric values in tests. client_golang's own
// testutil would pull in a module the repository does not otherwise need,
// and every package's tests read their metrics the same way.
package metrictest

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// Value is the value of the one counter or gauge c collects.
func Value(c prometheus.Collector) float64 {
	ch := make(chan prometheus.Metric, 1)
	c.Collect(ch)
	var m dto.Metric
	(<-ch).Write(&m)
	if m.Counter != nil {
		return m.Counter.GetValue()
	}
	return m.Gauge.GetValue()
}

// Gathered gathers g and returns the counter or gauge sample named name; with
// label given as names and values (name, value, name, value...), the sample
// that carries all those labels. It fails the test when there is none.
func Gathered(t testing.TB, g prometheus.Gatherer, name string, label ...string) float64 {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			have := map[string]string{}
			for _, l := range m.GetLabel() {
				have[l.GetName()] = l.GetValue()
			}
			match := true
			for i := 0; i+1 < len(label); i += 2 {
				if v, ok := have[label[i]]; !ok || v != label[i+1] {
					match = false
				}
			}
			if match {
				if c := m.GetCounter(); c != nil {
					return c.GetValue()
				}
				return m.GetGauge().GetValue()
			}
		}
	}
	t.Fatalf("metric %s%v not gathered", name, label)
	return 0
}
