//go:build linux

package promcheck

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/workersd/workersd/internal/testing/logtest"
	"github.com/workersd/workersd/internal/testing/metrictest"
	"github.com/workersd/workersd/internal/testing/poll"
	"github.com/workersd/workersd/registrar"
	"github.com/workersd/workersd/worker"
)

// The defaults here are the workers': a worker's final-scrape timeout and
// slot hold are what the interval rule is checked against.
func TestDefaultsAreTheWorkers(t *testing.T) {
	if DefaultFinalScrapeTimeout != worker.DefaultFinalScrapeTimeout {
		t.Errorf("DefaultFinalScrapeTimeout %s, the worker's %s", DefaultFinalScrapeTimeout, worker.DefaultFinalScrapeTimeout)
	}
	c, err := New(Config{URL: "http://localhost:9090"})
	if err != nil {
		t.Fatal(err)
	}
	if c.cfg.SlotHold != registrar.DefaultSlotHold {
		t.Errorf("slot hold %s, the registrar's %s", c.cfg.SlotHold, registrar.DefaultSlotHold)
	}
}

// A Runner checks at its interval and when the output gets its first
// target, records each check in its metrics, logs a finding once when it
// appears and once when it goes, and stops with its context.
func TestRunner(t *testing.T) {
	p := prometheus3(t)
	o := newOutput(t, 1)
	good := job{name: "workersd", files: []string{o.dir + "/*.json"}}
	p.start(renderConfig(good))
	c, err := New(Config{URL: p.URL()})
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg)
	if err := m.Register(); err != nil {
		t.Fatal(err)
	}
	var log logtest.Buffer
	var mu sync.Mutex
	changed := make(chan struct{})
	output := func() (Output, <-chan struct{}) {
		mu.Lock()
		defer mu.Unlock()
		return o.Output(), changed
	}
	r := NewRunner(RunnerConfig{Checkers: []*Checker{c}, Output: output, Interval: time.Hour,
		Logger: hclog.New(&hclog.LoggerOptions{Output: &log}), Metrics: m})
	if res := r.Results(); len(res) != 1 || !res[0].Checked.IsZero() {
		t.Fatalf("before Run: %+v", res)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		r.Run(ctx)
	}()
	defer func() {
		cancel()
		<-done
	}()
	checked := func() time.Time { return r.Results()[0].Checked }
	poll.Until(t, 30*time.Second, func() bool { return !checked().IsZero() }, "no first check")
	first := checked()
	findings := func(id string) float64 {
		return metrictest.Gathered(t, reg, "prometheus_check_findings", "prometheus", p.URL(), "check", id, "severity", string(severityOf(id)))
	}
	if n := findings(IDScrapeIntervalTooLong); n != 0 {
		t.Fatalf("findings before: %v", n)
	}

	// The first target changes the output's shape: a check at once,
	// though the interval is an hour away.
	j := good
	j.interval = "20s"
	p.Reload(renderConfig(j))
	mu.Lock()
	o.add(registration{newWorker(t).addr(), "api", "web-1/1"})
	close(changed)
	changed = make(chan struct{})
	mu.Unlock()
	poll.Until(t, 30*time.Second, func() bool { return checked().After(first) }, "no check after the output's shape changed")
	if got := ids(r.Results()[0]); len(got) != 1 || got[0] != IDScrapeIntervalTooLong {
		t.Fatalf("findings %v", got)
	}
	if n := findings(IDScrapeIntervalTooLong); n != 1 {
		t.Errorf("workersd_..._findings{check=%q} = %v, want 1", IDScrapeIntervalTooLong, n)
	}
	if n := strings.Count(log.String(), IDScrapeIntervalTooLong); n != 1 {
		t.Errorf("finding logged %d times, want once:\n%s", n, log.String())
	}
}
