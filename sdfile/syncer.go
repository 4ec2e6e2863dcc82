package sdfile

import (
	"context"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/prometheus/discovery/targetgroup"
)

// DefaultRetryInterval is how soon a failed write is tried again.
const DefaultRetryInterval = time.Second

// Options configure a Syncer.
type Options struct {
	// File is the file_sd file to keep up to date; empty writes no file
	// (the output is still served over HTTP).
	File string
	// RetryInterval is the wait before a failed write is tried again;
	// DefaultRetryInterval when zero.
	RetryInterval time.Duration
	// Logger; nil discards.
	Logger hclog.Logger
	// Metrics; nil means metrics that are kept but not registered.
	Metrics *Metrics
}

// Syncer keeps an output (a file and the bytes served as http_sd) equal to
// the target groups a discoverer reports.
//
// Update applies a discoverer's update and returns at once; Run renders and
// writes in its own goroutine. Updates that arrive while Run writes are
// coalesced into the next write, and an update that arrives alone is written
// at once, without a timer. A failed write leaves the previous file and is
// retried every RetryInterval until it succeeds.
//
// Until the first Update, there is no output: the file is left as it is and
// the handler answers 503.
type Syncer struct {
	opts   Options
	log    hclog.Logger
	m      *Metrics
	writer *FileWriter // nil without a file
	kick   chan struct{}

	mu    sync.Mutex
	store *Store
	dirty bool
	seen  time.Time // arrival of the oldest change not rendered yet

	out atomic.Pointer[[]byte] // the current output, nil before the first Update

	doneMu sync.Mutex
	synced []byte        // output of the last completed sync
	done   chan struct{} // closed after each completed sync
}

// New returns a Syncer; call Run to start writing.
func New(opts Options) *Syncer {
	if opts.RetryInterval <= 0 {
		opts.RetryInterval = DefaultRetryInterval
	}
	if opts.Logger == nil {
		opts.Logger = hclog.NewNullLogger()
	}
	if opts.Metrics == nil {
		opts.Metrics = NewMetrics(nil)
	}
	s := &Syncer{
		opts:  opts,
		log:   opts.Logger,
		m:     opts.Metrics,
		kick:  make(chan struct{}, 1),
		store: NewStore(),
		done:  make(chan struct{}),
	}
	if opts.File != "" {
		s.writer = NewFileWriter(opts.File)
	}
	return s
}

// Update applies one update from a discoverer (the first one being the
// complete set); seen is when the change arrived, for the latency metric.
// It implements etcdsd.Sink.
func (s *Syncer) Update(groups []*targetgroup.Group, seen time.Time) {
	s.mu.Lock()
	s.store.Apply(groups)
	s.dirty = true
	if !seen.IsZero() && (s.seen.IsZero() || seen.Before(s.seen)) {
		s.seen = seen
	}
	s.mu.Unlock()
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// Ready says whether the first update has been rendered.
func (s *Syncer) Ready() bool { return s.out.Load() != nil }

// Output returns the output of the last completed sync (rendered and, with
// a file, written or found to fail; nil before the first) and a channel that
// is closed when the next sync completes.
func (s *Syncer) Output() ([]byte, <-chan struct{}) {
	s.doneMu.Lock()
	defer s.doneMu.Unlock()
	return s.synced, s.done
}

// ServeHTTP serves the output as http_sd: 503 before the first update, then
// 200 with application/json.
func (s *Syncer) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	p := s.out.Load()
	if p == nil {
		http.Error(w, "waiting for the first complete listing of etcd", http.StatusServiceUnavailable)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(*p)))
	w.Write(*p)
}

// Run renders and writes until ctx is done.
func (s *Syncer) Run(ctx context.Context) {
	retry := time.NewTimer(time.Hour)
	retry.Stop()
	defer retry.Stop()
	var (
		pending  time.Time // arrival of the oldest change not in the file yet
		failing  bool
		lastWarn time.Time
	)
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.kick:
		case <-retry.C:
		}

		s.mu.Lock()
		dirty := s.dirty
		if dirty {
			rendered := s.store.Bytes()
			s.out.Store(&rendered)
			s.dirty = false
			if !s.seen.IsZero() && (pending.IsZero() || s.seen.Before(pending)) {
				pending = s.seen
			}
			s.seen = time.Time{}
			s.setTargets()
		}
		s.mu.Unlock()
		if !dirty && !failing {
			continue
		}
		data := *s.out.Load()

		if s.writer != nil {
			written, err := s.writer.Write(data)
			if err != nil {
				s.m.WriteErrors.Inc()
				if !failing || time.Since(lastWarn) >= time.Minute {
					s.log.Error("cannot write the targets file; retrying", "file", s.writer.Path(), "error", err, "retry_every", s.opts.RetryInterval)
					lastWarn = time.Now()
				}
				failing = true
				retry.Reset(s.opts.RetryInterval)
				s.finish(data)
				continue
			}
			if failing {
				s.log.Info("targets file written again", "file", s.writer.Path())
			}
			failing = false
			if written {
				s.m.Writes.Inc()
			}
			s.m.LastSuccess.SetToCurrentTime()
		}
		if !pending.IsZero() {
			s.m.Latency.Observe(time.Since(pending).Seconds())
			pending = time.Time{}
		}
		s.finish(data)
	}
}

// setTargets publishes the target counts; s.mu is held. Not by job: a
// registering client chooses the jobs, and must not grow the series
// (Prometheus itself has them: count by (job) (up)).
func (s *Syncer) setTargets() {
	total := 0
	counts := s.store.TargetsByJob()
	for _, n := range counts {
		total += n
	}
	s.m.Targets.Set(float64(total))
	s.m.Jobs.Set(float64(len(counts)))
}

// finish records data as synced and wakes up whoever waits on Output.
func (s *Syncer) finish(data []byte) {
	s.doneMu.Lock()
	s.synced = data
	close(s.done)
	s.done = make(chan struct{})
	s.doneMu.Unlock()
}
