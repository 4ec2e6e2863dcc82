package promcheck

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
)

const (
	// DefaultInterval is how often a Runner checks each server.
	DefaultInterval = time.Minute
	// minGap bounds how soon a change of the output's shape brings a
	// check after the last one.
	minGap = 5 * time.Second
)

// RunnerConfig configures a Runner.
type RunnerConfig struct {
	// Checkers are the servers to check, one Checker each.
	Checkers []*Checker
	// Output returns sdwriter's current output and a channel closed at its
	// next change (sdfile.Syncer's ShardOutputs, with the files and port).
	Output func() (Output, <-chan struct{})
	// Interval between checks. Optional, defaults to DefaultInterval.
	Interval time.Duration
	// Logger logs findings as they appear and clear. Optional: nil logs
	// nothing.
	Logger hclog.Logger
	// Metrics. Optional: nil records none.
	Metrics *Metrics
}

// Runner checks its servers every Interval, and at once (at most every 5 s)
// when sdwriter's output changes shape: a shard gets its first target or
// loses its last. Problems with targets need a second look to become
// findings, so a check follows once they are due.
type Runner struct {
	cfg RunnerConfig

	mu      sync.Mutex
	results []Result
}

// NewRunner returns a Runner; Run runs it.
func NewRunner(cfg RunnerConfig) *Runner {
	if cfg.Interval <= 0 {
		cfg.Interval = DefaultInterval
	}
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	r := &Runner{cfg: cfg}
	for _, c := range cfg.Checkers {
		r.results = append(r.results, Result{URL: c.URL(), Jobs: []Job{}, Findings: []Finding{}})
	}
	return r
}

// Results returns the last check of each server, in the order of the
// Checkers; a server not checked yet has a zero Checked time.
func (r *Runner) Results() []Result {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.results)
}

// Run checks until ctx is done.
func (r *Runner) Run(ctx context.Context) {
	if len(r.cfg.Checkers) == 0 {
		return
	}
	out, changed := r.cfg.Output()
	shape := shapeOf(out)
	timer := time.NewTimer(0)
	defer timer.Stop()
	var last time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-changed:
			out, changed = r.cfg.Output()
			if s := shapeOf(out); s != shape {
				shape = s
				timer.Reset(max(time.Until(last.Add(minGap)), 0))
			}
			continue
		case <-timer.C:
		}
		out, changed = r.cfg.Output()
		shape = shapeOf(out)
		last = time.Now()
		next := last.Add(r.cfg.Interval)
		for i, c := range r.cfg.Checkers {
			res := c.Check(ctx, out)
			if ctx.Err() != nil {
				return
			}
			r.cfg.Metrics.set(c.URL(), res)
			r.logChanges(r.swap(i, res), res)
			if res.Pending > 0 && res.ConfirmAt.Before(next) {
				next = res.ConfirmAt
			}
		}
		timer.Reset(max(time.Until(next), minGap))
	}
}

func (r *Runner) swap(i int, res Result) Result {
	r.mu.Lock()
	defer r.mu.Unlock()
	prev := r.results[i]
	r.results[i] = res
	return prev
}

// logChanges logs findings that appeared since prev, and those that went.
func (r *Runner) logChanges(prev, res Result) {
	key := func(f Finding) string { return f.ID + "\x00" + f.Job }
	before := map[string]bool{}
	for _, f := range prev.Findings {
		before[key(f)] = true
	}
	now := map[string]bool{}
	for _, f := range res.Findings {
		now[key(f)] = true
		if before[key(f)] {
			continue
		}
		args := []any{"prometheus", res.URL, "check", f.ID, "problem", f.Message, "fix", f.Fix}
		if f.Job != "" {
			args = append(args, "job", f.Job)
		}
		if f.Severity == Error {
			r.cfg.Logger.Error("Prometheus is not set up for exact totals", args...)
		} else {
			r.cfg.Logger.Warn("Prometheus may not be set up for exact totals", args...)
		}
	}
	for _, f := range prev.Findings {
		if !now[key(f)] {
			r.cfg.Logger.Info("check passes again", "prometheus", res.URL, "check", f.ID, "job", f.Job)
		}
	}
}

// shapeOf is what of out, when it changes, may change findings: its shards
// and which of them have targets. Cheap, since the output changes with
// every worker's start and stop; a new job is checked at the next interval.
func shapeOf(out Output) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d %q %s|", len(out.Shards), out.Files, out.SDPort)
	for _, s := range out.Shards {
		if len(bytes.TrimSpace(s)) > len("[]") {
			b.WriteByte('1')
		} else {
			b.WriteByte('0')
		}
	}
	return b.String()
}
