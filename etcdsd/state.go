package etcdsd

import (
	"errors"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/prometheus/discovery/targetgroup"
	"go.etcd.io/etcd/api/v3/mvccpb"

	"github.com/workersd/workersd/registrar"
	"github.com/workersd/workersd/sdfile"
)

// entry is one valid registration, kept as the bytes it renders to: its
// Target, handed to the sink as it is (a TargetSink keeps it rather than a
// copy), and the few facts the status page shows that the rendered labels
// do not hold. Job, host and slot are in the key. An entry is replaced, not
// modified, when its registration changes; only the fields below t change.
type entry struct {
	t         sdfile.Target // Source is the key; never modified once made
	addr      string        // a substring of t.Data when it can be
	pid       int
	started   int64 // StartedAt in Unix seconds (when hasStart), with:
	createRev int64
	modRev    int64

	startedNsec int32  // its nanoseconds
	startedOff  int32  // its zone offset, seconds east of UTC
	gen         uint32 // the listing that last saw it
	hasStart    bool
	inSink      bool   // the sink has t (else, maybe an earlier one: state.gone)
	next        *entry // the next registration of the same address (byAddr)
}

// startedAt is the registration's start, as it was registered (its zone
// kept as an offset).
func (e *entry) startedAt() time.Time {
	if !e.hasStart {
		return time.Time{}
	}
	return time.Unix(e.started, int64(e.startedNsec)).In(time.FixedZone("", int(e.startedOff)))
}

// newer says whether e wins over o for the same address: the registration
// created last (a restarted worker's, not its stale predecessor's); equal
// create revisions (one transaction) fall back to the key, so every reader
// picks the same one.
func (e *entry) newer(o *entry) bool {
	if e.createRev != o.createRev {
		return e.createRev > o.createRev
	}
	return e.t.Source > o.t.Source
}

// invalidEntry remembers a malformed key so that it is counted and logged
// once per write, not on every re-list.
type invalidEntry struct {
	createRev, modRev int64
	gen               uint32
	reason            string
	err               string // the exact error, for Status
}

// state mirrors the registrations under the prefix and what the sink was
// last given. It is owned by one goroutine.
//
// Changes are recorded with put, del and relist (or beginList, listPage
// and endList, a page at a time); flushTargets then returns the Targets
// that changed for the sink: a registration's when it became visible or
// changed, one without Data when it went away or became a duplicate.
//
// It keeps each registration rendered (entry) and nothing else of it: at
// 250,000 registrations, label maps and target groups were two thirds of
// sdwriter's memory and most of its garbage collector's work.
type state struct {
	prefix  string
	m       *Metrics
	target  TargetOptions
	onError func(key string, modRev int64, reason string, err error)
	onDup   func(dropped, winner *entry)

	entries map[string]*entry
	byAddr  map[string]*entry // the first of each address's chain (entry.next)
	invalid map[string]invalidEntry
	gone    map[string]*sdfile.Target // what the sink has of keys whose entry is gone or not yet flushed
	inSink  int                       // keys the sink has
	gen     uint32                    // of the listing under way or last made (wraps: only equality counts)

	touchedKeys  map[string]struct{}
	touchedAddrs map[string]struct{}
	// touchedAll stands for every key touched, during a first listing:
	// two maps of every key and address were a fifth of sdwriter's peak
	// memory.
	touchedAll bool

	// For Status, kept as entries come and go so that it costs no pass
	// over them: registrations by job and host, and the addresses that
	// more than one registration names.
	jobHosts map[string]map[string]int
	dupAddrs map[string]struct{}
}

func newState(prefix string, m *Metrics) *state {
	return &state{
		prefix:       prefix,
		m:            m,
		onError:      func(string, int64, string, error) {},
		onDup:        func(_, _ *entry) {},
		entries:      make(map[string]*entry),
		byAddr:       make(map[string]*entry),
		invalid:      make(map[string]invalidEntry),
		gone:         make(map[string]*sdfile.Target),
		touchedKeys:  make(map[string]struct{}),
		touchedAddrs: make(map[string]struct{}),
		jobHosts:     make(map[string]map[string]int),
		dupAddrs:     make(map[string]struct{}),
	}
}

// reason names the registrar field that failed validation.
func reason(err error) string {
	var fe *registrar.FieldError
	if !errors.As(err, &fe) {
		return "other"
	}
	field, _, _ := strings.Cut(fe.Field, ".") // labels.<name> -> labels
	if slices.Contains(invalidReasons, field) {
		return field
	}
	return "other"
}

// keyParts splits the key of a valid registration into job, host and
// instance (host/slot), substrings of the key.
func (s *state) keyParts(key string) (job, host, instance string) {
	rest := key[len(s.prefix):]
	job, instance, _ = strings.Cut(rest, "/")
	host, _, _ = strings.Cut(instance, "/")
	return job, host, instance
}

// put records a put of kv.
func (s *state) put(kv *mvccpb.KeyValue) {
	key := string(kv.Key)
	// Unchanged: a re-list reads again what the watch already saw.
	if old, ok := s.entries[key]; ok && old.modRev == kv.ModRevision && old.createRev == kv.CreateRevision {
		old.gen = s.gen
		return
	}
	if old, ok := s.invalid[key]; ok && old.modRev == kv.ModRevision && old.createRev == kv.CreateRevision {
		old.gen = s.gen
		s.invalid[key] = old
		return
	}
	r, err := registrar.Decode(s.prefix, kv.Key, kv.Value)
	if err != nil {
		s.removeEntry(key)
		s.setInvalid(key, kv.CreateRevision, kv.ModRevision, err)
		return
	}
	s.clearInvalid(key)
	s.removeEntry(key)
	job, host, _ := s.keyParts(key)
	t := sdfile.NewTarget(TargetGroup(r, s.target))
	e := &entry{t: *t, pid: r.PID, createRev: kv.CreateRevision, modRev: kv.ModRevision, gen: s.gen}
	if !r.StartedAt.IsZero() {
		_, off := r.StartedAt.Zone()
		e.hasStart, e.started, e.startedNsec, e.startedOff = true, r.StartedAt.Unix(), int32(r.StartedAt.Nanosecond()), int32(off)
	}
	e.t.Source, e.t.Job = key, job // the same bytes, one copy
	e.addr = substring(e.t.Data, r.Address)
	s.entries[key] = e
	e.next = s.byAddr[e.addr]
	s.byAddr[e.addr] = e
	if e.next != nil {
		s.dupAddrs[e.addr] = struct{}{}
	}
	hosts := s.jobHosts[job]
	if hosts == nil {
		hosts = make(map[string]int)
		s.jobHosts[job] = hosts
	}
	hosts[host]++
	s.touch(key, e.addr)
}

func (s *state) touch(key, addr string) {
	if !s.touchedAll {
		s.touchedKeys[key] = struct{}{}
		s.touchedAddrs[addr] = struct{}{}
	}
}

// substring returns sub as a substring of s when s holds it, else sub: the
// address of an entry shares the bytes of its rendered Data.
func substring(s, sub string) string {
	if i := strings.Index(s, sub); i >= 0 {
		return s[i : i+len(sub)]
	}
	return sub
}

// del records the deletion of key.
func (s *state) del(key string) {
	s.removeEntry(key)
	s.clearInvalid(key)
}

// relist replaces the whole state by a complete listing. fresh means the
// listing comes from another etcd cluster (rebuilt or restored), whose
// revisions say nothing about ours: every value is then decoded again.
func (s *state) relist(kvs []*mvccpb.KeyValue, fresh bool) {
	s.beginList(fresh)
	s.listPage(kvs)
	s.endList()
}

// beginList starts a listing read a page at a time (listPage), so that a
// listing of a million keys is never held whole; endList then removes what
// it did not see.
func (s *state) beginList(fresh bool) {
	s.gen++
	if len(s.entries) == 0 && len(s.gone) == 0 {
		s.touchedAll = true
	}
	if fresh {
		for _, e := range s.entries {
			e.modRev = -1
		}
		for key, inv := range s.invalid {
			inv.modRev = -1
			s.invalid[key] = inv
		}
	}
}

func (s *state) listPage(kvs []*mvccpb.KeyValue) {
	for _, kv := range kvs {
		s.put(kv)
	}
}

func (s *state) endList() {
	for key, e := range s.entries {
		if e.gen != s.gen {
			s.removeEntry(key)
		}
	}
	for key, inv := range s.invalid {
		if inv.gen != s.gen {
			s.clearInvalid(key)
		}
	}
}

func (s *state) removeEntry(key string) {
	e, ok := s.entries[key]
	if !ok {
		return
	}
	delete(s.entries, key)
	if first := s.byAddr[e.addr]; first == e {
		s.byAddr[e.addr] = e.next
	} else {
		for p := first; p != nil; p = p.next {
			if p.next == e {
				p.next = e.next
				break
			}
		}
	}
	switch first := s.byAddr[e.addr]; {
	case first == nil:
		delete(s.byAddr, e.addr)
		delete(s.dupAddrs, e.addr)
	case first.next == nil:
		delete(s.dupAddrs, e.addr)
	}
	if e.inSink {
		s.gone[key] = &e.t
	}
	job, host, _ := s.keyParts(key)
	if hosts := s.jobHosts[job]; hosts != nil {
		if hosts[host]--; hosts[host] <= 0 {
			delete(hosts, host)
		}
		if len(hosts) == 0 {
			delete(s.jobHosts, job)
		}
	}
	s.touch(key, e.addr)
}

func (s *state) setInvalid(key string, createRev, modRev int64, err error) {
	old, seen := s.invalid[key]
	r := reason(err)
	if seen {
		s.m.Invalid.WithLabelValues(old.reason).Dec()
	}
	s.invalid[key] = invalidEntry{createRev: createRev, modRev: modRev, gen: s.gen, reason: r, err: err.Error()}
	s.m.Invalid.WithLabelValues(r).Inc()
	s.m.InvalidSkipped.WithLabelValues(r).Inc()
	s.onError(key, modRev, r, err)
}

func (s *state) clearInvalid(key string) {
	old, ok := s.invalid[key]
	if !ok {
		return
	}
	delete(s.invalid, key)
	s.m.Invalid.WithLabelValues(old.reason).Dec()
}

// winner is the registration shown for addr, nil when there is none.
func (s *state) winner(addr string) *entry {
	var w *entry
	for e := s.byAddr[addr]; e != nil; e = e.next {
		if w == nil || e.newer(w) {
			w = e
		}
	}
	return w
}

// flushTargets returns the changes of what the sink should have since the
// last flush, sorted by source, and records them as the sink's. Each names
// the Target the sink had for its source (Old), so that the sink finds
// nothing: a registration's when it became visible or changed, none when it
// went away or became a duplicate.
func (s *state) flushTargets() []sdfile.Update {
	var out []sdfile.Update
	if s.touchedAll {
		out = make([]sdfile.Update, 0, len(s.entries))
		for key := range s.entries {
			out = s.flushKey(key, out)
		}
		for key := range s.gone {
			out = s.flushKey(key, out)
		}
		s.touchedAll = false
	} else {
		for addr := range s.touchedAddrs {
			for e := s.byAddr[addr]; e != nil; e = e.next {
				s.touchedKeys[e.t.Source] = struct{}{}
			}
		}
		for key := range s.touchedKeys {
			out = s.flushKey(key, out)
		}
	}
	// New maps, not clear(): a cleared map keeps its size, and ranging
	// over it costs that size, so after a listing of 100,000 keys every
	// later flush of one change scanned 100,000 empty slots: 150 µs a
	// change instead of 12 (BenchmarkEventAfterListing100k).
	s.touchedKeys = make(map[string]struct{})
	s.touchedAddrs = make(map[string]struct{})
	s.m.Registrations.Set(float64(len(s.entries)))
	s.m.Duplicates.Set(float64(len(s.entries) - s.inSink))
	slices.SortFunc(out, func(a, b sdfile.Update) int { return strings.Compare(a.Source(), b.Source()) })
	return out
}

// flushKey appends to out what changed for the sink of key.
func (s *state) flushKey(key string, out []sdfile.Update) []sdfile.Update {
	old := s.gone[key]
	delete(s.gone, key)
	_, _, instance := s.keyParts(key)
	e, ok := s.entries[key]
	switch {
	case ok && s.winner(e.addr) == e:
		if !e.inSink {
			if old == nil {
				s.inSink++
			}
			e.inSink = true
			out = append(out, sdfile.Update{Old: old, New: &e.t, Instance: instance})
		}
	case ok && e.inSink: // a duplicate now
		s.onDup(e, s.winner(e.addr))
		e.inSink = false
		s.inSink--
		out = append(out, sdfile.Update{Old: &e.t, Instance: instance})
	default:
		if ok {
			s.onDup(e, s.winner(e.addr))
		}
		if old != nil {
			s.inSink--
			out = append(out, sdfile.Update{Old: old, Instance: instance})
		}
	}
	return out
}

// flush is flushTargets as target groups, for a Sink that is no
// TargetSink (a Discoverer run by Prometheus' discovery manager): each is
// read back from its rendered entry, as file_sd would read it.
func (s *state) flush() []*targetgroup.Group {
	updates := s.flushTargets()
	out := make([]*targetgroup.Group, 0, len(updates))
	for _, u := range updates {
		if u.New == nil {
			out = append(out, &targetgroup.Group{Source: u.Old.Source})
		} else {
			out = append(out, groupOf(u.New))
		}
	}
	return out
}
