package sdfile

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/prometheus/discovery/targetgroup"
)

const (
	// DefaultRetryInterval is how soon a failed write is tried again.
	DefaultRetryInterval = time.Second
	// DefaultWriteRate is the rate, in bytes per second, at which a large
	// output is rewritten at most while its targets keep changing: 6 MiB/s
	// is one write of 100,000 targets (18.5 MiB) every 2.9 s. Chosen by
	// measuring (scripts/bench fleet, docs/SCALING.md): Prometheus 3 takes
	// 1.4 to 1.9 s to read such a file on a loaded machine, so this is
	// about the most often it can read it without falling behind, and
	// what keeps a change read by Prometheus within 5 s.
	DefaultWriteRate = 6 << 20
	// DefaultCoalesceAbove is the output size up to which every change is
	// written at once: 1 MiB, about 5,400 targets, which Prometheus parses
	// in about 50 ms.
	DefaultCoalesceAbove = 1 << 20
	// MaxWriteWait bounds the wait between two writes whatever the size:
	// Prometheus' discovery manager passes updates to its scrapers at
	// most every 5 s, so a longer wait would only delay them.
	MaxWriteWait = 5 * time.Second
)

// Options configure a Syncer.
type Options struct {
	// File is the file_sd file to keep up to date; empty writes no file
	// (the output is still served over HTTP). With Shards, the files are
	// ShardFile(File, k, Shards).
	File string
	// Shards splits the output into this many, as Prometheus' hashmod
	// relabelling on the instance label splits targets (Shard), so that
	// each of several Prometheus servers reads only its share. Optional,
	// defaults to 1.
	Shards int
	// RetryInterval is the wait before a failed write is tried again.
	// Optional, defaults to DefaultRetryInterval.
	RetryInterval time.Duration
	// WriteRate bounds how fast, in bytes per second, large outputs are
	// rendered and written while changes keep coming: after an output of
	// n bytes (all shards that changed), the next is not written for
	// (n - CoalesceAbove) / WriteRate, at most MaxWriteWait, and it takes
	// every change that arrived meanwhile. Every write costs Prometheus a
	// parse of the whole file; with 100,000 targets, writing each of
	// hundreds of changes a second would cost a core in each process and
	// gigabytes of disk writes for nothing, as Prometheus passes updates
	// on every 5 s. Optional, defaults to DefaultWriteRate; negative
	// writes every change as soon as the previous write is done.
	WriteRate int64
	// CoalesceAbove is the output size up to which changes are written at
	// once, without waiting. Optional, defaults to DefaultCoalesceAbove.
	CoalesceAbove int64
	// Logger; nil discards.
	Logger hclog.Logger
	// Metrics; nil means metrics that are kept but not registered.
	Metrics *Metrics
}

// Syncer keeps an output (a file and the bytes served as http_sd, or one
// of each per shard) equal to the target groups a discoverer reports.
//
// Update applies a discoverer's update and returns at once; Run renders and
// writes in its own goroutine. Updates that arrive while Run writes, or
// while it waits after writing a large output (Options.WriteRate), are
// coalesced into the next write; an update that arrives alone is written
// at once, without a timer. A failed write leaves the previous file and is
// retried every RetryInterval until it succeeds.
//
// Until the first Update, there is no output: the files are left as they
// are and the handler answers 503.
type Syncer struct {
	opts   Options
	log    hclog.Logger
	m      *Metrics
	shards []*shard
	kick   chan struct{}

	mu   sync.Mutex // guards the stores, dirty flags and seen
	seen time.Time  // arrival of the oldest change not rendered yet

	holdUntil atomic.Int64 // HoldUntil, in Unix nanoseconds

	doneMu      sync.Mutex
	done        chan struct{} // closed after each completed sync
	lastWrite   time.Time     // the files last found or made up to date
	lastError   error         // of the last failed write, nil after a success
	lastErrorAt time.Time
}

// SyncStatus is what the Syncer did last, for sdwriter's status page.
type SyncStatus struct {
	Files []string `json:"files,omitempty"`
	// LastWrite is when the files were last made (or found) up to date.
	LastWrite time.Time `json:"last_write,omitzero"`
	// LastError is why the last write failed; empty once one succeeds.
	LastError   string    `json:"last_error,omitempty"`
	LastErrorAt time.Time `json:"last_error_at,omitzero"`
	// Bytes is the size of the output, all shards together.
	Bytes int `json:"bytes"`
}

// Status reports the last write and the last error.
func (s *Syncer) Status() SyncStatus {
	st := SyncStatus{Files: s.Files()}
	for _, sh := range s.shards {
		if o := sh.out.Load(); o != nil {
			st.Bytes += o.size
		}
	}
	s.doneMu.Lock()
	defer s.doneMu.Unlock()
	st.LastWrite, st.LastErrorAt = s.lastWrite, s.lastErrorAt
	if s.lastError != nil {
		st.LastError = s.lastError.Error()
	}
	return st
}

// shard is one output: the whole one, or one of Options.Shards.
type shard struct {
	store  *Store      // under Syncer.mu
	dirty  bool        // under Syncer.mu
	writer *FileWriter // nil without a file

	out    atomic.Pointer[output] // the current output, nil before the first Update
	synced *output                // output of the last completed sync, under Syncer.doneMu
}

// New returns a Syncer; call Run to start writing.
func New(opts Options) *Syncer {
	if opts.Shards < 1 {
		opts.Shards = 1
	}
	if opts.RetryInterval <= 0 {
		opts.RetryInterval = DefaultRetryInterval
	}
	if opts.WriteRate == 0 {
		opts.WriteRate = DefaultWriteRate
	}
	if opts.CoalesceAbove == 0 {
		opts.CoalesceAbove = DefaultCoalesceAbove
	}
	if opts.Logger == nil {
		opts.Logger = hclog.NewNullLogger()
	}
	if opts.Metrics == nil {
		opts.Metrics = NewMetrics(nil)
	}
	s := &Syncer{
		opts: opts,
		log:  opts.Logger,
		m:    opts.Metrics,
		kick: make(chan struct{}, 1),
		done: make(chan struct{}),
	}
	for k := range opts.Shards {
		sh := &shard{store: NewStore()}
		if opts.File != "" {
			sh.writer = NewFileWriter(ShardFile(opts.File, k, opts.Shards))
		}
		s.shards = append(s.shards, sh)
	}
	return s
}

// Files are the files written, one per shard; none without Options.File.
func (s *Syncer) Files() []string {
	var files []string
	for _, sh := range s.shards {
		if sh.writer != nil {
			files = append(files, sh.writer.Path())
		}
	}
	return files
}

// Update applies one update from a discoverer (the first one being the
// complete set); seen is when the change arrived, for the latency metric.
// It implements etcdsd.Sink.
func (s *Syncer) Update(groups []*targetgroup.Group, seen time.Time) {
	s.mu.Lock()
	if len(s.shards) == 1 {
		s.shards[0].store.Apply(groups)
		s.shards[0].dirty = true
	} else {
		for k, part := range splitGroups(groups, len(s.shards)) {
			s.shards[k].store.Apply(part)
			s.shards[k].dirty = true
		}
	}
	s.updated(seen)
}

// UpdateTargets is Update for a discoverer that keeps its sources rendered
// (NewTarget): the Targets are kept as they are, not rendered again. Each
// Update's Old must be the Target last given for its source. A source
// goes to the shard of the Update's Instance, so it must keep its instance
// label for as long as it exists (an etcd key does: the instance is part
// of it).
// It implements etcdsd.TargetSink.
func (s *Syncer) UpdateTargets(updates []Update, seen time.Time) {
	s.mu.Lock()
	n := len(s.shards)
	for _, u := range updates {
		sh := s.shards[Shard(u.Instance, n)]
		sh.store.ApplyUpdate(u)
		sh.dirty = true
	}
	for _, sh := range s.shards {
		if sh.out.Load() == nil {
			sh.dirty = true // the first update, even of no targets, is an output
		}
	}
	s.updated(seen)
}

// updated records the arrival of an update and wakes Run; s.mu is held,
// and released.
func (s *Syncer) updated(seen time.Time) {
	if !seen.IsZero() && (s.seen.IsZero() || seen.Before(s.seen)) {
		s.seen = seen
	}
	s.mu.Unlock()
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// HoldUntil is when the next write can be at the earliest, while Run
// waits after writing a large output (Options.WriteRate); before then,
// updates are only kept. It implements etcdsd.Holder.
func (s *Syncer) HoldUntil() time.Time { return time.Unix(0, s.holdUntil.Load()) }

// Ready says whether the first update has been rendered.
func (s *Syncer) Ready() bool { return s.shards[0].out.Load() != nil }

// Output returns the output of the last completed sync (rendered and, with
// a file, written or found to fail; nil before the first) and a channel that
// is closed when the next sync completes. With shards, it is shard 0's;
// ShardOutputs has them all.
func (s *Syncer) Output() ([]byte, <-chan struct{}) {
	s.doneMu.Lock()
	defer s.doneMu.Unlock()
	return s.shards[0].synced.bytes(), s.done
}

// ShardOutputs is Output for every shard, in shard order.
func (s *Syncer) ShardOutputs() ([][]byte, <-chan struct{}) {
	s.doneMu.Lock()
	defer s.doneMu.Unlock()
	out := make([][]byte, len(s.shards))
	for k, sh := range s.shards {
		out[k] = sh.synced.bytes()
	}
	return out, s.done
}

// ServeHTTP serves the output as http_sd: 503 before the first update, then
// 200 with application/json. With shards, the query parameter shard names
// the one to serve (/sd?shard=0).
func (s *Syncer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	sh := s.shards[0]
	if n := len(s.shards); n > 1 {
		k, err := strconv.Atoi(r.URL.Query().Get("shard"))
		if err != nil || k < 0 || k >= n {
			http.Error(w, fmt.Sprintf("the targets are split into %d shards: ask for one with ?shard=0 to ?shard=%d", n, n-1), http.StatusBadRequest)
			return
		}
		sh = s.shards[k]
	}
	o := sh.out.Load()
	if o == nil {
		http.Error(w, "waiting for the first complete listing of etcd", http.StatusServiceUnavailable)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(o.size))
	o.WriteTo(w)
}

// Run renders and writes until ctx is done.
func (s *Syncer) Run(ctx context.Context) {
	wake := time.NewTimer(time.Hour)
	wake.Stop()
	defer wake.Stop()
	var (
		pending  time.Time // arrival of the oldest change not in the file yet
		failing  bool
		lastWarn time.Time
		next     time.Time // no sync before: the wait after a large write, or a retry
	)
	for {
		// Until next, changes pile up without waking this goroutine for
		// each: at hundreds of changes a second, each wake-up (a futex
		// call and a pass through the scheduler) adds up.
		if wait := time.Until(next); wait > 0 {
			wake.Reset(wait)
			select {
			case <-ctx.Done():
				return
			case <-wake.C:
			}
		} else {
			select {
			case <-ctx.Done():
				return
			case <-s.kick:
			}
		}
		start := time.Now()

		rendered := 0
		s.mu.Lock()
		for _, sh := range s.shards {
			if sh.dirty {
				o := sh.store.output()
				sh.out.Store(o)
				sh.dirty = false
				rendered += o.size
			}
		}
		changed := rendered > 0
		if changed {
			if !s.seen.IsZero() && (pending.IsZero() || s.seen.Before(pending)) {
				pending = s.seen
			}
			s.seen = time.Time{}
			s.setTargets()
		}
		s.mu.Unlock()
		if !changed && !failing {
			continue
		}

		if err := s.write(); err != nil {
			s.m.WriteErrors.Inc()
			if !failing || time.Since(lastWarn) >= time.Minute {
				s.log.Error("cannot write the targets file; retrying", "error", err, "retry_every", s.opts.RetryInterval)
				lastWarn = time.Now()
			}
			failing = true
			next = time.Now().Add(s.opts.RetryInterval)
			s.doneMu.Lock()
			s.lastError, s.lastErrorAt = err, time.Now()
			s.doneMu.Unlock()
			s.finish()
			continue
		}
		if failing {
			s.log.Info("targets file written again", "files", s.Files())
		}
		failing = false
		if !pending.IsZero() {
			s.m.Latency.Observe(time.Since(pending).Seconds())
			pending = time.Time{}
		}
		next = start.Add(s.writeWait(rendered))
		s.holdUntil.Store(next.UnixNano())
		s.doneMu.Lock()
		s.lastWrite, s.lastError = time.Now(), nil
		s.doneMu.Unlock()
		s.finish()
	}
}

// write brings every shard's file up to its current output: FileWriter
// writes only those whose content changed. The first error is returned
// after every shard was tried.
func (s *Syncer) write() error {
	var first error
	wrote := false
	for _, sh := range s.shards {
		if sh.writer == nil {
			continue
		}
		o := sh.out.Load()
		written, err := sh.writer.writeOutput(o)
		if err != nil {
			if first == nil {
				first = fmt.Errorf("%s: %w", sh.writer.Path(), err)
			}
			continue
		}
		if written {
			s.m.Writes.Inc()
			s.m.WrittenBytes.Add(float64(o.size))
		}
		wrote = true
	}
	if first == nil && wrote {
		s.m.LastSuccess.SetToCurrentTime()
	}
	return first
}

// writeWait is how long to wait after rendering n bytes before the next
// render and write (Options.WriteRate).
func (s *Syncer) writeWait(n int) time.Duration {
	over := int64(n) - s.opts.CoalesceAbove
	if s.opts.WriteRate < 0 || over <= 0 {
		return 0
	}
	return min(MaxWriteWait, time.Duration(float64(over)/float64(s.opts.WriteRate)*float64(time.Second)))
}

// setTargets publishes the target counts; s.mu is held. Not by job: a
// registering client chooses the jobs, and must not grow the series
// (Prometheus itself has them: count by (job) (up)).
func (s *Syncer) setTargets() {
	total, size := 0, 0
	jobs := map[string]bool{}
	for _, sh := range s.shards {
		for j, n := range sh.store.TargetsByJob() {
			total += n
			jobs[j] = true
		}
		if o := sh.out.Load(); o != nil {
			size += o.size
		}
	}
	s.m.Targets.Set(float64(total))
	s.m.Jobs.Set(float64(len(jobs)))
	s.m.Bytes.Set(float64(size))
}

// finish records the outputs as synced and wakes up whoever waits on
// Output.
func (s *Syncer) finish() {
	s.doneMu.Lock()
	for _, sh := range s.shards {
		if o := sh.out.Load(); o != nil {
			sh.synced = o
		}
	}
	close(s.done)
	s.done = make(chan struct{})
	s.doneMu.Unlock()
}
