package sdfile

import (
	"maps"
	"slices"
	"strings"

	"github.com/prometheus/prometheus/discovery/targetgroup"
)

// Store holds the current target groups by source, each rendered once when
// it arrives, and their order by source: rendering the whole set is a merge
// of the sources that came since the last render into that order, and one
// copy. It applies updates as Prometheus' discovery manager does: a group
// replaces the previous group of its source, and a group without targets
// removes it.
// A Store is not safe for concurrent use.
type Store struct {
	entries map[string]*storeEntry
	order   []*storeEntry // sorted by source as of the last render; may hold gone entries
	added   []*storeEntry // new since the last render, in no order
	gone    int           // entries of order and added that went since
	size    int           // bytes of all entries
	jobs    map[string]int
}

type storeEntry struct {
	source string
	data   []byte
	jobs   []string
	gone   bool
}

// NewStore returns an empty Store.
func NewStore() *Store {
	return &Store{entries: make(map[string]*storeEntry), jobs: make(map[string]int)}
}

// Apply applies the groups of one update.
func (s *Store) Apply(groups []*targetgroup.Group) {
	for _, g := range groups {
		if g == nil {
			continue
		}
		e, had := s.entries[g.Source]
		if had {
			s.uncount(e)
		}
		data, jobs := renderGroup(g)
		if len(data) == 0 {
			if had {
				delete(s.entries, g.Source)
				e.gone = true
				s.gone++
			}
			continue
		}
		if !had {
			e = &storeEntry{source: g.Source}
			s.entries[g.Source] = e
			s.added = append(s.added, e)
		}
		e.data, e.jobs = data, jobs
		s.size += len(data)
		for _, j := range jobs {
			s.jobs[j]++
		}
	}
}

func compareEntries(a, b *storeEntry) int { return strings.Compare(a.source, b.source) }

// sort brings order up to date: the entries that went are dropped and the
// new ones merged in, in one pass over the order.
func (s *Store) sort() {
	if len(s.added) == 0 && s.gone == 0 {
		return
	}
	slices.SortFunc(s.added, compareEntries)
	merged := make([]*storeEntry, 0, len(s.entries))
	i, j := 0, 0
	for i < len(s.order) || j < len(s.added) {
		var e *storeEntry
		if j == len(s.added) || (i < len(s.order) && compareEntries(s.order[i], s.added[j]) < 0) {
			e, i = s.order[i], i+1
		} else {
			e, j = s.added[j], j+1
		}
		if !e.gone {
			merged = append(merged, e)
		}
	}
	s.order, s.added, s.gone = merged, nil, 0
}

func (s *Store) uncount(e *storeEntry) {
	s.size -= len(e.data)
	for _, j := range e.jobs {
		if s.jobs[j]--; s.jobs[j] == 0 {
			delete(s.jobs, j)
		}
	}
}

// Len is the number of groups with targets.
func (s *Store) Len() int { return len(s.entries) }

// TargetsByJob counts the targets by job label ("" for none).
func (s *Store) TargetsByJob() map[string]int { return maps.Clone(s.jobs) }

// Bytes renders every group (see Render). The result is never modified
// afterwards; the Store does not keep it.
func (s *Store) Bytes() []byte {
	if len(s.entries) == 0 {
		return []byte("[]\n")
	}
	s.sort()
	b := make([]byte, 0, s.size+2*len(s.order)+4)
	b = append(b, "[\n"...)
	for i, e := range s.order {
		if i > 0 {
			b = append(b, ",\n"...)
		}
		b = append(b, e.data...)
	}
	return append(b, "\n]\n"...)
}
