package worker

import (
	"context"
	"runtime"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/workersd/workersd/internal/metricset"
)

// DefaultMaxUnitAge is how long a unit may stay in flight before the tracer
// treats it as abandoned. Long enough for any ordinary job; jobs that really
// run longer should set TracerOptions.MaxAge (or Config.TracerMaxAge).
const DefaultMaxUnitAge = time.Hour

// TracerOptions configure a Tracer.
type TracerOptions struct {
	// Now is the clock; nil means time.Now. Tests inject a fake one.
	Now func() time.Time
	// MaxAge bounds how long a unit may stay in flight; zero means
	// DefaultMaxUnitAge, negative means no bound.
	MaxAge time.Duration
	// Metrics receive the tracer's own counts. Optional, defaults to
	// metrics registered nowhere.
	Metrics *TracerMetrics
}

// Tracer accounts the time of in-flight units of work to counters
// incrementally: every Collect (run before each scrape) adds to each unit's
// counter the seconds elapsed since the unit was last accounted, and End adds
// the rest. The counter's total is therefore the true elapsed time once every
// unit has ended, and between scrapes it grows as the work happens instead of
// in one spike when a long unit ends.
//
// When a unit ends, in this order of preference:
//   - End is called: its time is accounted up to that moment;
//   - the context given to Start is done: its time is accounted up to the
//     moment of cancellation, so a unit tied to a request or job context
//     cannot outlive it;
//   - the *Unit handle becomes unreachable without End (its goroutine ended or
//     forgot it), noticed at the next garbage collection; or the unit has been
//     in flight longer than MaxAge. Such a unit is abandoned: the tracer does
//     not know when it really ended, so it adds nothing beyond what earlier
//     scrapes accounted, drops it and counts it in
//     workersd_tracer_abandoned_units_total{reason="unreachable"|"max_age"}.
//
// A Tracer is safe for concurrent use.
type Tracer struct {
	now    func() time.Time
	maxAge time.Duration

	mu    sync.Mutex
	units map[*unit]struct{}

	m *TracerMetrics
}

// TracerMetrics are a Tracer's own metrics. Their names carry no prefix:
// the program chooses one by wrapping the Registerer (package worker uses
// workersd_tracer_).
type TracerMetrics struct {
	metricset.Set

	// Abandoned counts units dropped without End, by reason.
	Abandoned *prometheus.CounterVec
	// InFlight is the number of units not yet ended.
	InFlight prometheus.Gauge
}

// NewTracerMetrics creates the metrics; Register registers them with reg.
func NewTracerMetrics(reg prometheus.Registerer) *TracerMetrics {
	m := &TracerMetrics{
		Abandoned: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "abandoned_units_total",
			Help: "Traced units dropped without End: handle unreachable, or in flight longer than the maximum age.",
		}, []string{"reason"}),
		InFlight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "units_in_flight",
			Help: "Traced units of work currently in flight.",
		}),
	}
	for _, r := range []string{"unreachable", "max_age"} {
		m.Abandoned.WithLabelValues(r)
	}
	m.Set = metricset.New(reg, m.Abandoned, m.InFlight)
	return m
}

// unit is the tracer's record of one unit; the handle (*Unit) given to the
// caller is separate so that its reachability tells whether anyone can still
// end it.
type unit struct {
	c           prometheus.Counter
	start, last time.Time
	done        bool
	stopAfter   func() bool // unregisters the context.AfterFunc
}

// Unit is an in-flight unit of work; call End when it is finished.
type Unit struct {
	t       *Tracer
	u       *unit
	cleanup runtime.Cleanup
}

// NewTracer returns a tracer. The error is reserved for options it cannot
// use; there are none today.
func NewTracer(o TracerOptions) (*Tracer, error) {
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.MaxAge == 0 {
		o.MaxAge = DefaultMaxUnitAge
	}
	if o.Metrics == nil {
		o.Metrics = NewTracerMetrics(nil)
	}
	return &Tracer{now: o.Now, maxAge: o.MaxAge, units: make(map[*unit]struct{}), m: o.Metrics}, nil
}

// Start begins a unit of work whose time is added to c. ctx may be
// context.Background(); when it can be cancelled, cancellation ends the unit.
// Use CounterVec.WithLabelValues for a counter with labels.
func (t *Tracer) Start(ctx context.Context, c prometheus.Counter) *Unit {
	now := t.now()
	u := &unit{c: c, start: now, last: now}
	t.mu.Lock()
	t.units[u] = struct{}{}
	t.m.InFlight.Inc()
	t.mu.Unlock()
	if ctx.Done() != nil {
		stop := context.AfterFunc(ctx, func() { t.end(u, t.now()) })
		t.mu.Lock()
		if !u.done {
			u.stopAfter = stop
		}
		t.mu.Unlock()
	}
	h := &Unit{t: t, u: u}
	// The cleanup must not reach h, or h would never become unreachable.
	h.cleanup = runtime.AddCleanup(h, func(u *unit) { t.abandon(u, "unreachable") }, u)
	return h
}

// End finishes the unit, accounting its remaining time. It returns how long
// the unit ran (up to its end by context or abandonment, if that came
// first). Calling End again has no effect.
func (h *Unit) End() time.Duration {
	h.cleanup.Stop()
	h.t.end(h.u, h.t.now())
	h.t.mu.Lock()
	defer h.t.mu.Unlock()
	return h.u.last.Sub(h.u.start)
}

// Trace runs fn as one unit of work accounted to c.
func (t *Tracer) Trace(ctx context.Context, c prometheus.Counter, fn func(context.Context) error) error {
	u := t.Start(ctx, c)
	defer u.End()
	return fn(ctx)
}

func (t *Tracer) end(u *unit, at time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if u.done {
		return
	}
	t.account(u, at)
	t.drop(u)
}

func (t *Tracer) abandon(u *unit, reason string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if u.done {
		return
	}
	t.drop(u)
	t.m.Abandoned.WithLabelValues(reason).Inc()
}

// account adds the time since u was last accounted; t.mu is held. A clock
// that went backwards adds nothing rather than a negative amount a counter
// would refuse.
func (t *Tracer) account(u *unit, at time.Time) {
	if d := at.Sub(u.last); d > 0 {
		u.c.Add(d.Seconds())
		u.last = at
	}
}

// drop forgets u; t.mu is held.
func (t *Tracer) drop(u *unit) {
	u.done = true
	delete(t.units, u)
	t.m.InFlight.Dec()
	if u.stopAfter != nil {
		u.stopAfter()
		u.stopAfter = nil
	}
}

// Collect accounts every in-flight unit up to now. The worker calls it before
// each scrape gathers its registry; call it yourself only when gathering
// another way (or use Gatherer).
func (t *Tracer) Collect() {
	now := t.now()
	t.mu.Lock()
	defer t.mu.Unlock()
	for u := range t.units {
		if t.maxAge > 0 && now.Sub(u.start) > t.maxAge {
			t.drop(u)
			t.m.Abandoned.WithLabelValues("max_age").Inc()
			continue
		}
		t.account(u, now)
	}
}

// InFlight is the number of units not yet ended.
func (t *Tracer) InFlight() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.units)
}

// Gatherer wraps g so that every Gather first runs Collect: the counters a
// scrape reads then include the time of the work still in flight.
func (t *Tracer) Gatherer(g prometheus.Gatherer) prometheus.Gatherer {
	return prometheus.GathererFunc(func() ([]*dto.MetricFamily, error) {
		t.Collect()
		return g.Gather()
	})
}
