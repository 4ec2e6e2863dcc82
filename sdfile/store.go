package sdfile

import (
	"maps"
	"slices"
	"strings"

	"github.com/prometheus/prometheus/discovery/targetgroup"
)

// Target is one source's part of the output, rendered once: what a Store
// keeps, and what a discoverer that keeps its registrations rendered
// (package etcdsd) hands a Syncer without building target groups. A Target
// is never modified once handed over; a change is a new Target of the same
// source. Writing the output is then a copy of the Targets' bytes in order,
// whatever they hold.
type Target struct {
	Source string
	// Data is the source's file_sd entries as Render writes them, without
	// the separators between sources; empty means the source is gone.
	Data string
	// Job is the job label of the first target, more those of the others
	// (groups of several targets only), for TargetsByJob.
	Job  string
	more *[]string
}

// Update replaces the Target of a source: Old is the Target the Store (or
// Syncer) was last given for the source, nil when none or when it has
// been removed since; New is the source's Target from now on, nil to
// remove it. Whoever hands over Updates knows Old (etcdsd does), which
// spares the Store a search for it at every change.
type Update struct {
	Old, New *Target
	// Instance is the instance label of the source's targets, which picks
	// its shard (Shard); only Syncer.UpdateTargets reads it.
	Instance string
}

// Source is the source u changes.
func (u Update) Source() string {
	if u.New != nil {
		return u.New.Source
	}
	return u.Old.Source
}

// NewTarget renders g. A group without targets (or with none Prometheus
// could scrape) gives a Target without Data, which removes its source.
func NewTarget(g *targetgroup.Group) *Target {
	data, jobs := renderGroup(g)
	t := &Target{Source: g.Source, Data: string(data)}
	if len(jobs) > 0 {
		t.Job = jobs[0]
	}
	if len(jobs) > 1 {
		more := jobs[1:]
		t.more = &more
	}
	return t
}

// Store holds the current Targets and their order by source: rendering the
// whole set is a merge of the sources that changed since the last render
// into that order, and one copy. It applies updates as Prometheus'
// discovery manager does: a group replaces the previous group of its
// source, and a group without targets removes it.
//
// It keeps no map of all sources: a source is looked up by binary search
// in the order, which is all the memory a source costs besides its Target.
// A Store is not safe for concurrent use.
type Store struct {
	order   []*Target          // sorted by source as of the last render
	data    []string           // the Data of order, for the copy (no Target to read per source)
	pending map[string]*Target // changed since the last render; nil for a source gone
	n       int                // sources with targets
	size    int                // bytes of their Data
	jobs    map[string]int
}

// NewStore returns an empty Store.
func NewStore() *Store {
	return &Store{pending: make(map[string]*Target), jobs: make(map[string]int)}
}

// Apply applies the groups of one update.
func (s *Store) Apply(groups []*targetgroup.Group) {
	for _, g := range groups {
		if g != nil {
			s.ApplyTarget(NewTarget(g))
		}
	}
}

// ApplyTarget replaces the Target of t's source by t (removes it when t has
// no Data), finding the Target it replaces.
func (s *Store) ApplyTarget(t *Target) {
	u := Update{Old: s.lookup(t.Source), New: t}
	if t.Data == "" {
		u.New = nil
		if u.Old == nil {
			return // nothing to remove
		}
	}
	s.ApplyUpdate(u)
}

// ApplyUpdate applies u, whose Old must be the source's current Target.
func (s *Store) ApplyUpdate(u Update) {
	if u.Old != nil {
		s.count(u.Old, -1)
	}
	t := u.New
	if t == nil {
		s.pending[u.Old.Source] = nil
		return
	}
	s.count(t, 1)
	// A source after every other, with nothing pending (a first listing,
	// which comes in order): straight into the order.
	if n := len(s.order); len(s.pending) == 0 && (n == 0 || s.order[n-1].Source < t.Source) {
		s.order = append(s.order, t)
		s.data = append(s.data, t.Data)
		return
	}
	s.pending[t.Source] = t
}

// lookup returns the current Target of source, nil when there is none.
func (s *Store) lookup(source string) *Target {
	if t, ok := s.pending[source]; ok {
		return t
	}
	if i, ok := s.search(s.order, source); ok {
		return s.order[i]
	}
	return nil
}

func (s *Store) search(order []*Target, source string) (int, bool) {
	return slices.BinarySearchFunc(order, source, func(t *Target, src string) int { return strings.Compare(t.Source, src) })
}

func (s *Store) count(t *Target, sign int) {
	s.n += sign
	s.size += sign * len(t.Data)
	s.countJob(t.Job, sign)
	if t.more != nil {
		for _, j := range *t.more {
			s.countJob(j, sign)
		}
	}
}

func (s *Store) countJob(j string, sign int) {
	if s.jobs[j] += sign; s.jobs[j] == 0 {
		delete(s.jobs, j)
	}
}

// sort brings order up to date: each changed source is found by binary
// search and the runs of unchanged ones between them are copied whole, so
// a render compares about (changes × log sources) keys, not every key.
func (s *Store) sort() {
	if len(s.pending) == 0 {
		return
	}
	merged, data := make([]*Target, 0, s.n), make([]string, 0, s.n)
	rest, restData := s.order, s.data
	for _, source := range slices.Sorted(maps.Keys(s.pending)) {
		i, found := s.search(rest, source)
		merged, data = append(merged, rest[:i]...), append(data, restData[:i]...)
		if found {
			i++ // replaced or gone
		}
		rest, restData = rest[i:], restData[i:]
		if t := s.pending[source]; t != nil {
			merged, data = append(merged, t), append(data, t.Data)
		}
	}
	s.order, s.data = append(merged, rest...), append(data, restData...)
	s.pending = make(map[string]*Target)
}

// Len is the number of groups with targets.
func (s *Store) Len() int { return s.n }

// TargetsByJob counts the targets by job label ("" for none).
func (s *Store) TargetsByJob() map[string]int { return maps.Clone(s.jobs) }

// output is the current output, which shares the Store's order until the
// next change: nothing is copied.
func (s *Store) output() *output {
	s.sort()
	return newOutput(s.data[:len(s.data):len(s.data)], s.size)
}

// Bytes renders every group (see Render). The result is never modified
// afterwards; the Store does not keep it.
func (s *Store) Bytes() []byte {
	if s.n == 0 {
		return []byte("[]\n")
	}
	s.sort()
	b := make([]byte, 0, s.size+2*len(s.order)+4)
	b = append(b, "[\n"...)
	for i, t := range s.order {
		if i > 0 {
			b = append(b, ",\n"...)
		}
		b = append(b, t.Data...)
	}
	return append(b, "\n]\n"...)
}
