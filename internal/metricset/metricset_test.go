package metricset

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

func TestRegisterUnregister(t *testing.T) {
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "c_total", Help: "h"})
	g := prometheus.NewGauge(prometheus.GaugeOpts{Name: "g", Help: "h"})
	s := New(reg, c, g)
	if err := s.Register(); err != nil {
		t.Fatal(err)
	}
	if mfs, _ := reg.Gather(); len(mfs) != 2 {
		t.Fatalf("%d families registered, want 2", len(mfs))
	}
	// Twice: both collectors refused, both errors told.
	if err := s.Register(); err == nil {
		t.Fatal("a second Register succeeded")
	}
	s.Unregister()
	if mfs, _ := reg.Gather(); len(mfs) != 0 {
		t.Fatalf("%d families left after Unregister", len(mfs))
	}
	if err := New(nil, c).Register(); err != nil {
		t.Fatalf("a nil Registerer: %v", err)
	}
}
