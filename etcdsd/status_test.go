package etcdsd

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/workersd/workersd/registrar"
	"github.com/workersd/workersd/sdfile"
)

func TestSelectSmallest(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for _, n := range []int{1, 2, 3, 10, 100, 1000} {
		for _, k := range []int{0, 1, n / 3, n - 1, n} {
			es := make([]*entry, n)
			for i := range es {
				es[i] = &entry{t: sdfile.Target{Source: fmt.Sprintf("k%06d", rng.IntN(n/2+1))}} // with repeats
			}
			sorted := slices.SortedFunc(slices.Values(slices.Clone(es)), compareEntries)
			selectSmallest(es, k)
			got := slices.SortedFunc(slices.Values(es[:k]), compareEntries)
			for i := range got {
				if got[i].t.Source != sorted[i].t.Source {
					t.Fatalf("n %d, k %d: the first k are not the k smallest: %v", n, k, keysOf(got))
				}
			}
		}
	}
}

func keysOf(es []*entry) []string {
	var out []string
	for _, e := range es {
		out = append(out, e.t.Source)
	}
	return out
}

// Status' summaries, kept as registrations come and go, agree with a count
// over the registrations, and its page is the registrations in key order.
func TestStatusAgreesWithTheRegistrations(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	st := newState(testPrefix, NewMetrics(nil))
	d := &Discoverer{st: st, synced: make(chan struct{})}
	rev := int64(1)
	for step := range 2000 {
		key := fmt.Sprintf("job-%d/host-%d/%d", rng.IntN(3), rng.IntN(5), rng.IntN(8))
		rev++
		if rng.IntN(3) == 0 {
			st.del(testPrefix + key)
		} else {
			v := value(t, registrar.Value{Address: fmt.Sprintf("10.0.0.%d:9100", rng.IntN(40))}) // duplicates on purpose
			st.put(kv(key, v, rev, rev))
		}
		st.flush()
		if step%100 != 0 {
			continue
		}
		s := d.Status(Query{Limit: MaxPage})
		jobs := map[string]map[string]int{}
		for key := range st.entries {
			job, host, _ := st.keyParts(key)
			if jobs[job] == nil {
				jobs[job] = map[string]int{}
			}
			jobs[job][host]++
		}
		var want []JobSummary
		for _, j := range slices.Sorted(maps.Keys(jobs)) {
			n := 0
			for _, c := range jobs[j] {
				n += c
			}
			want = append(want, JobSummary{Job: j, Registrations: n, Hosts: len(jobs[j])})
		}
		if !slices.Equal(s.Jobs, want) {
			t.Fatalf("step %d: jobs %v, want %v", step, s.Jobs, want)
		}
		dups := 0
		for _, first := range st.byAddr {
			for e := first.next; e != nil; e = e.next {
				dups++
			}
		}
		if s.DuplicatesTotal != dups || len(s.Page) != len(st.entries) || s.Targets+dups != len(st.entries) {
			t.Fatalf("step %d: %d duplicates (want %d), page %d of %d, %d targets", step, s.DuplicatesTotal, dups, len(s.Page), len(st.entries), s.Targets)
		}
		if !slices.IsSortedFunc(s.Page, func(a, b Registration) int { return strings.Compare(a.Key, b.Key) }) {
			t.Fatalf("step %d: page not in key order", step)
		}
		// A page further on is the continuation of the first.
		if len(s.Page) > 10 {
			p := d.Status(Query{Offset: 5, Limit: 3})
			if len(p.Page) != 3 || p.Page[0].Key != s.Page[5].Key || p.Page[2].Key != s.Page[7].Key {
				t.Fatalf("step %d: page at offset 5 %v, want %v", step, p.Page, s.Page[5:8])
			}
		}
	}
}
