package etcdsd

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/prometheus/discovery/targetgroup"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/workersd/workersd/internal/backoff"
	"github.com/workersd/workersd/registrar"
	"github.com/workersd/workersd/sdfile"
)

// Defaults for Options.
const (
	DefaultPageSize = 2000
	// MaxPages bounds the requests of one listing. etcd counts the keys
	// left in the range at every page, so a listing costs pages × keys:
	// a million keys in pages of 2000 took 66 s of etcd's time, where 64
	// pages take seconds (docs/SCALING.md).
	MaxPages              = 64
	DefaultRequestTimeout = 10 * time.Second
	DefaultProbeInterval  = 5 * time.Second
	DefaultMinBackoff     = 100 * time.Millisecond
	DefaultMaxBackoff     = 5 * time.Second
)

// Sink receives what a Discoverer finds: first, once the first listing is
// complete, every group (possibly none); then every change. A group with no
// targets means its source (the etcd key) is gone. Groups are never modified
// after they are handed over. seen is when the etcd response that caused the
// update arrived.
//
// Update is called from the Discoverer's goroutine; while it runs, etcd
// events queue up and are coalesced into the next call.
type Sink interface {
	Update(groups []*targetgroup.Group, seen time.Time)
}

// TargetSink is a Sink that takes registrations as they are kept, rendered
// (sdfile.Target, one per etcd key), instead of target groups built for it
// and rendered again: sdfile.Syncer is one. Each update names the Target
// it replaces, the one this sink was last given for the key. Targets are
// never modified after they are handed over.
type TargetSink interface {
	Sink
	UpdateTargets(updates []sdfile.Update, seen time.Time)
}

// Holder is a Sink that knows it will write nothing before some moment
// (sdfile.Syncer, while it waits after writing a large output): until a
// little before it, a Discoverer holds the events it receives and hands
// them over together. The status page and metrics then lag by as much,
// at most maxHold.
type Holder interface {
	Sink
	// HoldUntil is the moment; zero or past when the sink writes at once.
	HoldUntil() time.Time
}

const (
	// holdMargin is how long before a Holder's moment the held events are
	// handed over, so that they are in its next write.
	holdMargin = 100 * time.Millisecond
	// maxHold bounds one hold.
	maxHold = time.Second
)

// flush takes what changed in st since the last flush, in the form sink
// takes, and returns how many sources changed and the call that hands them
// over, to be made without holding d.mu.
func (d *Discoverer) flush(st *state, sink Sink) (changed int, hand func(seen time.Time)) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if ts, ok := sink.(TargetSink); ok {
		updates := st.flushTargets()
		return len(updates), func(seen time.Time) { ts.UpdateTargets(updates, seen) }
	}
	groups := st.flush()
	return len(groups), func(seen time.Time) { sink.Update(groups, seen) }
}

// Options configure a Discoverer. Zero values mean the defaults.
type Options struct {
	// Prefix is where registrations live; registrar.DefaultPrefix when empty.
	Prefix string
	// Logger; nil discards.
	Logger hclog.Logger
	// Metrics; nil means metrics that are kept but not registered.
	Metrics *Metrics
	// PageSize is the number of keys per list request, at least: with more
	// than MaxPages pages of keys, pages grow to make MaxPages.
	PageSize int
	// RequestTimeout bounds one list request.
	RequestTimeout time.Duration
	// ProbeInterval is how often etcd is probed with a linearizable read,
	// which tells whether it is reachable and whether it is still the same
	// cluster (a rebuilt etcd starts its revisions again, and a watch on the
	// old revision would wait for ever).
	ProbeInterval time.Duration
	// MinBackoff and MaxBackoff bound the jittered, doubling wait between
	// failed attempts to list or watch.
	MinBackoff, MaxBackoff time.Duration
	// Target: what each target carries besides its registration.
	Target TargetOptions
}

// Discoverer lists and watches the registrations under a prefix and turns
// them into target groups, one per registration (see TargetGroup).
//
// It never reports an outage as an empty target list: while etcd cannot be
// read, nothing is emitted; after it can, the prefix is listed again and only
// the differences are emitted. When two registrations have the same address,
// only the one created last is emitted.
type Discoverer struct {
	client *clientv3.Client
	owned  bool // close client when Run returns
	opts   Options
	log    hclog.Logger
	m      *Metrics

	running   atomic.Bool
	synced    chan struct{}
	reachable atomic.Bool

	// mu guards st: the Run goroutine changes it under the write lock,
	// Status reads it under the read lock.
	mu sync.RWMutex
	st *state

	// Owned by the Run goroutine.
	invalidLog, dupLog *limiter
}

// New returns a Discoverer reading through client, which the caller keeps
// and closes after Run has returned.
func New(client *clientv3.Client, opts Options) (*Discoverer, error) {
	if client == nil {
		return nil, errors.New("etcdsd: no etcd client")
	}
	if opts.Prefix == "" {
		opts.Prefix = registrar.DefaultPrefix
	}
	if err := registrar.ValidatePrefix(opts.Prefix); err != nil {
		return nil, fmt.Errorf("etcdsd: %w", err)
	}
	setDefault(&opts.PageSize, DefaultPageSize)
	setDefault(&opts.RequestTimeout, DefaultRequestTimeout)
	setDefault(&opts.ProbeInterval, DefaultProbeInterval)
	setDefault(&opts.MinBackoff, DefaultMinBackoff)
	setDefault(&opts.MaxBackoff, DefaultMaxBackoff)
	opts.MaxBackoff = max(opts.MaxBackoff, opts.MinBackoff)
	if opts.Logger == nil {
		opts.Logger = hclog.NewNullLogger()
	}
	if opts.Metrics == nil {
		opts.Metrics = NewMetrics(nil)
	}
	return &Discoverer{
		client:     client,
		opts:       opts,
		log:        opts.Logger,
		m:          opts.Metrics,
		synced:     make(chan struct{}),
		invalidLog: newLimiter(time.Second, 10),
		dupLog:     newLimiter(time.Second, 10),
	}, nil
}

func setDefault[T int | time.Duration](v *T, def T) {
	if *v <= 0 {
		*v = def
	}
}

// Synced is closed once the first complete listing has been handed over.
func (d *Discoverer) Synced() <-chan struct{} { return d.synced }

// Reachable says whether etcd answered the last list, watch or probe.
func (d *Discoverer) Reachable() bool { return d.reachable.Load() }

// Run implements discovery.Discoverer: it sends the groups to up until ctx is
// done. It does not close up. A Discoverer runs once (Run or RunSink).
func (d *Discoverer) Run(ctx context.Context, up chan<- []*targetgroup.Group) {
	d.RunSink(ctx, chanSink{ctx: ctx, up: up})
}

type chanSink struct {
	ctx context.Context
	up  chan<- []*targetgroup.Group
}

func (s chanSink) Update(groups []*targetgroup.Group, _ time.Time) {
	select {
	case s.up <- groups:
	case <-s.ctx.Done():
	}
}

// RunSink hands everything found to sink until ctx is done.
func (d *Discoverer) RunSink(ctx context.Context, sink Sink) {
	if !d.running.CompareAndSwap(false, true) {
		panic("etcdsd: a Discoverer runs only once")
	}
	if d.owned {
		defer d.client.Close()
	}
	st := newState(d.opts.Prefix, d.m)
	st.onError = d.logInvalid
	st.onDup = d.logDuplicate
	st.target = d.opts.Target
	d.mu.Lock()
	d.st = st
	d.mu.Unlock()
	bo := backoff.Policy{Base: d.opts.MinBackoff, Max: d.opts.MaxBackoff}
	failures := 0 // waits since a watch last lasted
	var cluster uint64
	first := true
	for ctx.Err() == nil {
		start := time.Now()
		fresh := false
		hdr, err := d.list(ctx, func(hdr *pb.ResponseHeader, kvs []*mvccpb.KeyValue) {
			d.mu.Lock()
			defer d.mu.Unlock()
			if hdr != nil { // the first page
				fresh = !first && hdr.ClusterId != cluster
				st.beginList(fresh)
			}
			st.listPage(kvs)
		})
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			d.m.ListFailures.Inc()
			if errors.Is(err, rpctypes.ErrCompacted) {
				// Compacted between two pages: start again at the newest revision.
				continue
			}
			d.setReachable(false, err)
			wait := bo.Delay(failures)
			failures++
			d.log.Warn("cannot list etcd; the targets already emitted stay as they are", "prefix", d.opts.Prefix, "error", err, "retry_in", wait)
			if !sleep(ctx, wait) {
				return
			}
			continue
		}
		seen := time.Now()
		d.setReachable(true, nil)
		if fresh {
			d.log.Warn("etcd is another cluster now (rebuilt or restored); reading every registration again",
				"old_cluster_id", fmt.Sprintf("%x", cluster), "cluster_id", fmt.Sprintf("%x", hdr.ClusterId))
		}
		cluster = hdr.ClusterId
		d.mu.Lock()
		st.endList()
		d.mu.Unlock()
		changed, hand := d.flush(st, sink)
		if first {
			d.log.Info("listed registrations", "prefix", d.opts.Prefix, "revision", hdr.Revision,
				"registrations", len(st.entries), "targets", st.inSink, "invalid", len(st.invalid), "took", seen.Sub(start))
			hand(seen)
			close(d.synced)
			first = false
		} else {
			d.m.Relists.Inc()
			d.log.Info("listed registrations again", "revision", hdr.Revision, "changed", changed, "targets", st.inSink)
			if changed > 0 {
				hand(seen)
			}
		}

		watchStart := time.Now()
		end := d.watch(ctx, st, sink, hdr.Revision, cluster)
		if ctx.Err() != nil {
			return
		}
		d.m.WatchRestarts.Inc()
		if time.Since(watchStart) > d.opts.MaxBackoff {
			failures = 0
		}
		if end.err != nil && errors.Is(end.err, rpctypes.ErrCompacted) {
			d.log.Info("watch fell behind etcd compaction; listing again", "error", end.err)
			continue
		}
		if end.rebuilt {
			continue
		}
		wait := bo.Delay(failures)
		failures++
		d.log.Warn("etcd watch ended; listing again", "error", end.err, "retry_in", wait)
		if !sleep(ctx, wait) {
			return
		}
	}
}

// list reads every key under the prefix at one revision, in pages, handing
// each to page as it arrives (hdr only with the first), so that no more than
// a page of raw keys and values is held at once.
func (d *Discoverer) list(ctx context.Context, page func(hdr *pb.ResponseHeader, kvs []*mvccpb.KeyValue)) (*pb.ResponseHeader, error) {
	end := clientv3.GetPrefixRangeEnd(d.opts.Prefix)
	key := d.opts.Prefix
	var hdr *pb.ResponseHeader
	limit := int64(d.opts.PageSize)
	for {
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(limit)}
		if hdr != nil {
			opts = append(opts, clientv3.WithRev(hdr.Revision))
		}
		rctx, cancel := context.WithTimeout(ctx, d.opts.RequestTimeout)
		resp, err := d.client.Get(rctx, key, opts...)
		cancel()
		if err != nil {
			return nil, err
		}
		if hdr == nil {
			hdr = resp.Header
			limit = max(limit, (resp.Count+MaxPages-1)/MaxPages)
			page(hdr, resp.Kvs)
		} else {
			page(nil, resp.Kvs)
		}
		if !resp.More || len(resp.Kvs) == 0 {
			return hdr, nil
		}
		key = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
}

// watchEnd says why a watch ended.
type watchEnd struct {
	err     error
	rebuilt bool // the probe found another cluster or an older revision
}

type probeResult struct {
	err     error
	cluster uint64
	rev     int64
	minRev  int64 // the watch had seen this revision before the probe began
}

// watch applies every change after rev until the watch ends or ctx is done.
// Events that arrive together are applied together and handed over once.
func (d *Discoverer) watch(ctx context.Context, st *state, sink Sink, rev int64, cluster uint64) watchEnd {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	var probes sync.WaitGroup
	defer probes.Wait()
	defer cancel()
	wch := d.client.Watch(wctx, d.opts.Prefix, clientv3.WithPrefix(), clientv3.WithRev(rev+1))

	ticker := time.NewTicker(d.opts.ProbeInterval)
	defer ticker.Stop()
	probeCh := make(chan probeResult, 1)
	probing := false
	lastRev := rev

	// apply handles one response; a non-nil result ends the watch.
	apply := func(resp clientv3.WatchResponse, ok bool) *watchEnd {
		if !ok {
			return &watchEnd{err: errors.New("watch channel closed")}
		}
		if err := resp.Err(); err != nil {
			return &watchEnd{err: err}
		}
		d.setReachable(true, nil)
		d.mu.Lock()
		for _, ev := range resp.Events {
			switch ev.Type {
			case clientv3.EventTypePut:
				st.put(ev.Kv)
			case clientv3.EventTypeDelete:
				st.del(string(ev.Kv.Key))
			}
		}
		d.mu.Unlock()
		lastRev = max(lastRev, resp.Header.GetRevision())
		return nil
	}
	emit := func(seen time.Time) {
		if changed, hand := d.flush(st, sink); changed > 0 {
			hand(seen)
		}
	}

	holder, _ := sink.(Holder)
	hold := time.NewTimer(time.Hour)
	hold.Stop()
	defer hold.Stop()
	for {
		// While the sink writes nothing anyway, let events pile up in the
		// client and take them in one go: at hundreds of events a second,
		// waking for each, applying it and handing it over one at a time
		// was a fifth of sdwriter's CPU (docs/PROFILING.md).
		if holder != nil {
			if wait := min(time.Until(holder.HoldUntil())-holdMargin, maxHold); wait > 0 {
				hold.Reset(wait)
				select {
				case <-ctx.Done():
					return watchEnd{err: ctx.Err()}
				case <-hold.C:
				}
			}
		}
		select {
		case <-ctx.Done():
			return watchEnd{err: ctx.Err()}
		case resp, ok := <-wch:
			seen := time.Now()
		drain:
			for {
				if end := apply(resp, ok); end != nil {
					emit(seen)
					return *end
				}
				select {
				case resp, ok = <-wch:
					continue
				default:
				}
				// The client hands its buffered responses over one by
				// one from another goroutine: let it run once before
				// concluding that nothing more is there. Not a timer: a
				// lone event is delayed by a scheduler round at most.
				runtime.Gosched()
				select {
				case resp, ok = <-wch:
				default:
					break drain
				}
			}
			emit(seen)
		case <-ticker.C:
			if probing {
				continue
			}
			probing = true
			probes.Add(1)
			go func(minRev int64) {
				defer probes.Done()
				probeCh <- d.probe(wctx, minRev)
			}(lastRev)
		case p := <-probeCh:
			probing = false
			if errors.Is(p.err, context.Canceled) && ctx.Err() != nil {
				continue
			}
			d.setReachable(p.err == nil, p.err)
			if p.err != nil {
				continue
			}
			if p.cluster != cluster || p.rev < p.minRev {
				d.log.Warn("etcd was rebuilt or restored under this watch", "cluster_id", fmt.Sprintf("%x", p.cluster),
					"revision", p.rev, "watched_revision", p.minRev)
				return watchEnd{rebuilt: true}
			}
		}
	}
}

// probe reads one key linearizably: it needs a leader and returns the
// cluster's current revision, which is at least minRev unless etcd was
// rebuilt.
func (d *Discoverer) probe(ctx context.Context, minRev int64) probeResult {
	pctx, cancel := context.WithTimeout(ctx, min(d.opts.RequestTimeout, d.opts.ProbeInterval))
	defer cancel()
	resp, err := d.client.Get(pctx, d.opts.Prefix, clientv3.WithCountOnly())
	if err != nil {
		return probeResult{err: err, minRev: minRev}
	}
	return probeResult{cluster: resp.Header.ClusterId, rev: resp.Header.Revision, minRev: minRev}
}

func (d *Discoverer) setReachable(ok bool, err error) {
	if ok {
		d.m.Reachable.Set(1)
	} else {
		d.m.Reachable.Set(0)
	}
	if d.reachable.Swap(ok) == ok {
		return
	}
	if ok {
		d.log.Info("etcd is reachable")
	} else {
		d.log.Warn("etcd is unreachable; keeping the targets already emitted", "error", err)
	}
}

func (d *Discoverer) logInvalid(key string, modRev int64, reason string, err error) {
	if ok, suppressed := d.invalidLog.allow(); ok {
		d.log.Warn("skipping invalid registration", "key", key, "mod_revision", modRev, "reason", reason, "error", err, "suppressed_since_last", suppressed)
	}
}

func (d *Discoverer) logDuplicate(dropped, winner *entry) {
	if ok, suppressed := d.dupLog.allow(); ok {
		d.log.Warn("dropping duplicate registration: another key created later has the same address",
			"key", dropped.t.Source, "address", dropped.addr, "kept", winner.t.Source, "suppressed_since_last", suppressed)
	}
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
