package worker

import (
	"context"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/workersd/workersd/internal/testing/metrictest"
	"github.com/workersd/workersd/internal/testing/poll"
)

// fakeClock is a settable clock for the tracer.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{now: time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

func newTestTracer(t *testing.T, clock *fakeClock, maxAge time.Duration) (*Tracer, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	m := NewTracerMetrics(prometheus.WrapRegistererWithPrefix("workersd_tracer_", reg))
	if err := m.Register(); err != nil {
		t.Fatal(err)
	}
	tr, err := NewTracer(TracerOptions{Now: clock.Now, MaxAge: maxAge, Metrics: m})
	if err != nil {
		t.Fatal(err)
	}
	return tr, reg
}

// A 60 s unit scraped every 15 s adds 15 s per scrape, not 0, 0, 0, 60; after
// End the total is the true elapsed time.
func TestTracerLongUnitAddsAtEveryScrape(t *testing.T) {
	clock := newFakeClock()
	tr, reg := newTestTracer(t, clock, 0)
	seconds := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "job_seconds_total", Help: "h"}, []string{"class"})
	reg.MustRegister(seconds)
	g := tr.Gatherer(reg)

	u := tr.Start(context.Background(), seconds.WithLabelValues("export"))
	clock.Advance(7 * time.Second)
	// A unit that starts between scrapes and ends before the next one.
	short := tr.Start(context.Background(), seconds.WithLabelValues("short"))
	clock.Advance(3 * time.Second)
	if d := short.End(); d != 3*time.Second {
		t.Fatalf("short unit End = %s, want 3s", d)
	}
	clock.Advance(5 * time.Second) // t = 15 s

	prev := 0.0
	for i := 1; i <= 3; i++ {
		got := metrictest.Gathered(t, g, "job_seconds_total", "class", "export")
		if added := got - prev; added < 14.999 || added > 15.001 {
			t.Fatalf("scrape %d added %.3f s, want about 15", i, added)
		}
		prev = got
		clock.Advance(15 * time.Second)
	}
	// t = 60 s: the unit ends just before the fourth scrape.
	if d := u.End(); d != 60*time.Second {
		t.Fatalf("End = %s, want 60s", d)
	}
	if got := metrictest.Gathered(t, g, "job_seconds_total", "class", "export"); got != 60 {
		t.Fatalf("total after End = %v, want 60", got)
	}
	if got := metrictest.Gathered(t, g, "job_seconds_total", "class", "short"); got != 3 {
		t.Fatalf("short total = %v, want 3", got)
	}
	// Ended units add nothing more.
	clock.Advance(time.Minute)
	u.End()
	if got := metrictest.Gathered(t, g, "job_seconds_total", "class", "export"); got != 60 {
		t.Fatalf("total a minute after End = %v, want 60", got)
	}
	if tr.InFlight() != 0 {
		t.Fatalf("in flight = %d, want 0", tr.InFlight())
	}
}

// Cancelling the context given to Start ends the unit at that moment.
func TestTracerContextEndsUnit(t *testing.T) {
	clock := newFakeClock()
	tr, _ := newTestTracer(t, clock, 0)
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "c_total", Help: "h"})
	ctx, cancel := context.WithCancel(context.Background())
	u := tr.Start(ctx, c)
	clock.Advance(10 * time.Second)
	cancel()
	poll.Until(t, 5*time.Second, func() bool { return tr.InFlight() == 0 }, "unit still in flight after its context was cancelled")
	clock.Advance(time.Hour)
	tr.Collect()
	if got := metrictest.Value(c); got != 10 {
		t.Fatalf("counter = %v, want 10 (accounted up to the cancellation)", got)
	}
	if d := u.End(); d != 10*time.Second {
		t.Fatalf("End after cancellation = %s, want 10s", d)
	}
}

// A unit whose handle is dropped without End stops counting and is counted
// as abandoned.
func TestTracerUnreachableUnitIsAbandoned(t *testing.T) {
	clock := newFakeClock()
	tr, _ := newTestTracer(t, clock, 0)
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "c_total", Help: "h"})
	func() {
		tr.Start(context.Background(), c) // forgotten: no End
	}()
	clock.Advance(5 * time.Second)
	tr.Collect()
	poll.Until(t, 10*time.Second, func() bool {
		runtime.GC()
		return tr.InFlight() == 0
	}, "a unit nobody can end is still in flight")
	clock.Advance(time.Hour)
	tr.Collect()
	if got := metrictest.Value(c); got != 5 {
		t.Fatalf("counter = %v, want 5 (nothing after abandonment)", got)
	}
	if got := metrictest.Value(tr.m.Abandoned.WithLabelValues("unreachable")); got != 1 {
		t.Fatalf("abandoned{unreachable} = %v, want 1", got)
	}
}

// A unit in flight longer than MaxAge is dropped at the next scrape.
func TestTracerMaxAge(t *testing.T) {
	clock := newFakeClock()
	tr, _ := newTestTracer(t, clock, time.Minute)
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "c_total", Help: "h"})
	u := tr.Start(context.Background(), c)
	clock.Advance(30 * time.Second)
	tr.Collect()
	clock.Advance(31 * time.Second)
	tr.Collect()
	if tr.InFlight() != 0 {
		t.Fatal("unit older than MaxAge still in flight")
	}
	clock.Advance(time.Minute)
	u.End()
	if got := metrictest.Value(c); got != 30 {
		t.Fatalf("counter = %v, want 30", got)
	}
	if got := metrictest.Value(tr.m.Abandoned.WithLabelValues("max_age")); got != 1 {
		t.Fatalf("abandoned{max_age} = %v, want 1", got)
	}
}

// Start, End and Collect from many goroutines; the total is exact.
func TestTracerConcurrent(t *testing.T) {
	clock := newFakeClock()
	tr, _ := newTestTracer(t, clock, 0)
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "c_total", Help: "h"})
	var wg sync.WaitGroup
	units := make([]*Unit, 100)
	for i := range units {
		wg.Go(func() { units[i] = tr.Start(context.Background(), c) })
	}
	wg.Wait()
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range 50 {
			tr.Collect()
		}
	}()
	clock.Advance(2 * time.Second)
	for _, u := range units {
		wg.Go(func() { u.End() })
	}
	wg.Wait()
	<-done
	if got := metrictest.Value(c); got != 200 {
		t.Fatalf("counter = %v, want 200", got)
	}
}
