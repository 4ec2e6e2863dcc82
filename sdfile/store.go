package sdfile

import (
	"maps"
	"slices"
	"strings"

	"github.com/prometheus/prometheus/discovery/targetgroup"
)

// sortedInsertMax is how many new sources one Apply inserts one by one
// into the sorted order; more (an initial listing) and the order is
// rebuilt with one sort when next rendered.
const sortedInsertMax = 64

// Store holds the current target groups by source, each rendered once when
// it arrives, and their order by source, kept up to date as sources come
// and go: rendering the whole set is one copy. It applies updates as
// Prometheus' discovery manager does: a group replaces the previous group
// of its source, and a group without targets removes it.
// A Store is not safe for concurrent use.
type Store struct {
	entries map[string]*storeEntry
	order   []*storeEntry // sorted by source; nil when it must be rebuilt
	size    int           // bytes of all entries
	jobs    map[string]int
}

type storeEntry struct {
	source string
	data   []byte
	jobs   []string
}

// NewStore returns an empty Store.
func NewStore() *Store {
	return &Store{entries: make(map[string]*storeEntry), order: []*storeEntry{}, jobs: make(map[string]int)}
}

// Apply applies the groups of one update.
func (s *Store) Apply(groups []*targetgroup.Group) {
	inserted := 0
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
				s.remove(e)
			}
			continue
		}
		if !had {
			e = &storeEntry{source: g.Source}
			s.entries[g.Source] = e
			if inserted++; inserted > sortedInsertMax {
				s.order = nil
			}
			s.insert(e)
		}
		e.data, e.jobs = data, jobs
		s.size += len(data)
		for _, j := range jobs {
			s.jobs[j]++
		}
	}
}

func compareSource(e *storeEntry, source string) int { return strings.Compare(e.source, source) }

// insert puts e in the order, unless the order is to be rebuilt.
func (s *Store) insert(e *storeEntry) {
	if s.order == nil {
		return
	}
	i, _ := slices.BinarySearchFunc(s.order, e.source, compareSource)
	s.order = slices.Insert(s.order, i, e)
}

// remove takes e out of the order, unless the order is to be rebuilt.
func (s *Store) remove(e *storeEntry) {
	if s.order == nil {
		return
	}
	if i, found := slices.BinarySearchFunc(s.order, e.source, compareSource); found {
		s.order = slices.Delete(s.order, i, i+1)
	}
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
	if s.order == nil {
		s.order = slices.SortedFunc(maps.Values(s.entries), func(a, b *storeEntry) int { return strings.Compare(a.source, b.source) })
	}
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
