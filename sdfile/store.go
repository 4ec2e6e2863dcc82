package sdfile

import (
	"maps"
	"slices"

	"github.com/prometheus/prometheus/discovery/targetgroup"
)

// Store holds the current target groups by source, each rendered once when
// it arrives, so that rendering the whole set is a sort and a copy. It
// applies updates as Prometheus' discovery manager does: a group replaces the
// previous group of its source, and a group without targets removes it.
// A Store is not safe for concurrent use.
type Store struct {
	entries map[string]storeEntry
	order   []string // sorted sources; nil after a source came or went
	size    int      // bytes of all entries
	jobs    map[string]int
}

type storeEntry struct {
	data []byte
	jobs []string
}

// NewStore returns an empty Store.
func NewStore() *Store {
	return &Store{entries: make(map[string]storeEntry), jobs: make(map[string]int)}
}

// Apply applies the groups of one update.
func (s *Store) Apply(groups []*targetgroup.Group) {
	for _, g := range groups {
		if g == nil {
			continue
		}
		old, had := s.entries[g.Source]
		if had {
			s.uncount(old)
		}
		data, jobs := renderGroup(g)
		if len(data) == 0 {
			if had {
				delete(s.entries, g.Source)
				s.order = nil
			}
			continue
		}
		s.entries[g.Source] = storeEntry{data: data, jobs: jobs}
		s.size += len(data)
		for _, j := range jobs {
			s.jobs[j]++
		}
		if !had {
			s.order = nil
		}
	}
}

func (s *Store) uncount(e storeEntry) {
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
		s.order = slices.Sorted(maps.Keys(s.entries))
	}
	b := make([]byte, 0, s.size+2*len(s.order)+4)
	b = append(b, "[\n"...)
	for i, src := range s.order {
		if i > 0 {
			b = append(b, ",\n"...)
		}
		b = append(b, s.entries[src].data...)
	}
	return append(b, "\n]\n"...)
}
