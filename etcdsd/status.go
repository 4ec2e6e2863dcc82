package etcdsd

import (
	"cmp"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/common/model"

	"github.com/workersd/workersd/registrar"
)

// MaxPage bounds the registrations, rejected keys and duplicates one Status
// returns: the page stays fast at hundreds of thousands of registrations.
const MaxPage = 1000

// Query selects what Status returns of the registrations: those of Job
// and Host (empty: any), sorted by key, from Offset, at most Limit
// (default 100, at most MaxPage).
type Query struct {
	Job, Host     string
	Offset, Limit int
}

// Status is what a Discoverer knows, for people and scripts: sdwriter's
// status page and its /api/v1/.
type Status struct {
	// Synced is false until the first complete listing.
	Synced    bool `json:"synced"`
	Reachable bool `json:"etcd_reachable"`
	// Registrations counts the valid registrations, Targets those emitted
	// (one per address: the others are Duplicates).
	Registrations int          `json:"registrations"`
	Targets       int          `json:"targets"`
	Jobs          []JobSummary `json:"jobs"`
	// Page is the registrations Query selected, of Matching in all.
	Matching int            `json:"matching"`
	Page     []Registration `json:"registrations_page"`
	// Rejected are the keys skipped as malformed (the first MaxPage by
	// key, of RejectedTotal); Duplicates the registrations dropped
	// because another names the same address (the first MaxPage, of
	// DuplicatesTotal).
	RejectedTotal   int         `json:"rejected_total"`
	Rejected        []Rejected  `json:"rejected"`
	DuplicatesTotal int         `json:"duplicates_total"`
	Duplicates      []Duplicate `json:"duplicates"`
}

// JobSummary counts a job's registrations and hosts.
type JobSummary struct {
	Job           string `json:"job"`
	Registrations int    `json:"registrations"`
	Hosts         int    `json:"hosts"`
}

// Registration is one valid registration as the page shows it.
type Registration struct {
	Key       string            `json:"key"`
	Job       string            `json:"job"`
	Host      string            `json:"host"`
	Slot      int               `json:"slot"`
	Address   string            `json:"address"`
	PID       int               `json:"pid,omitempty"`
	StartedAt time.Time         `json:"started_at,omitzero"`
	Labels    map[string]string `json:"labels,omitempty"`
	// Shown is false for a duplicate: another registration of the same
	// address is the target.
	Shown bool `json:"shown"`
}

// Rejected is a key skipped as malformed, with why.
type Rejected struct {
	Key    string `json:"key"`
	Reason string `json:"reason"` // the field at fault, as in the metric
	Error  string `json:"error"`  // the exact error
}

// Duplicate is a registration dropped for another of the same address.
type Duplicate struct {
	Address string `json:"address"`
	Dropped string `json:"dropped"`
	Winner  string `json:"winner"`
}

// Status returns what the Discoverer knows now; q selects the page of
// registrations. Its cost is a pass over the registrations' pointers and
// the ordering of the page alone; the summaries are kept as registrations
// change.
func (d *Discoverer) Status(q Query) Status {
	if q.Limit <= 0 {
		q.Limit = 100
	}
	q.Limit = min(q.Limit, MaxPage)
	q.Offset = max(q.Offset, 0)
	out := Status{Reachable: d.Reachable()}
	select {
	case <-d.synced:
		out.Synced = true
	default:
	}
	d.mu.RLock()
	defer d.mu.RUnlock()
	st := d.st
	if st == nil {
		return out
	}
	out.Registrations, out.Targets = len(st.entries), st.inSink

	for _, job := range slices.Sorted(maps.Keys(st.jobHosts)) {
		n := 0
		for _, c := range st.jobHosts[job] {
			n += c
		}
		out.Jobs = append(out.Jobs, JobSummary{Job: job, Registrations: n, Hosts: len(st.jobHosts[job])})
	}
	var matching []*entry
	if q.Job == "" && q.Host == "" {
		matching = slices.Collect(maps.Values(st.entries))
	} else {
		for key, e := range st.entries {
			if job, host, _ := st.keyParts(key); (q.Job == "" || job == q.Job) && (q.Host == "" || host == q.Host) {
				matching = append(matching, e)
			}
		}
	}
	out.Matching = len(matching)
	if q.Offset < len(matching) {
		// Only the first offset+limit by key are put in order.
		end := min(len(matching), q.Offset+q.Limit)
		selectSmallest(matching, end)
		first := matching[:end]
		slices.SortFunc(first, compareEntries)
		for _, e := range first[q.Offset:] {
			out.Page = append(out.Page, e.view(st.prefix, e.inSink || st.gone[e.t.Source] != nil))
		}
	}

	out.RejectedTotal = len(st.invalid)
	for _, key := range slices.Sorted(maps.Keys(st.invalid)) {
		if len(out.Rejected) == MaxPage {
			break
		}
		inv := st.invalid[key]
		out.Rejected = append(out.Rejected, Rejected{Key: key, Reason: inv.reason, Error: inv.err})
	}

	for addr := range st.dupAddrs {
		w := st.winner(addr)
		for e := st.byAddr[addr]; e != nil; e = e.next {
			if e != w {
				out.DuplicatesTotal++
				out.Duplicates = append(out.Duplicates, Duplicate{Address: addr, Dropped: e.t.Source, Winner: w.t.Source})
			}
		}
	}
	slices.SortFunc(out.Duplicates, func(a, b Duplicate) int { return cmp.Compare(a.Dropped, b.Dropped) })
	if len(out.Duplicates) > MaxPage {
		out.Duplicates = out.Duplicates[:MaxPage]
	}
	return out
}

// view is e as the page shows it, read back from its rendered entry and its
// key (an entry keeps no decoded copy of its registration: at 100,000 that
// copy was 100 MB of sdwriter's memory).
func (e *entry) view(prefix string, shown bool) Registration {
	k, _ := registrar.ParseKey(prefix, e.t.Source) // valid: it was decoded
	r := Registration{Key: e.t.Source, Job: k.Job, Host: k.Host, Slot: k.Slot, Address: e.addr, PID: e.pid, StartedAt: e.startedAt(), Shown: shown}
	for name, value := range parse(&e.t).Labels {
		// Those set by TargetGroup; a user label never starts with "__"
		// (registrar refuses it), so any such label is TargetGroup's too.
		switch {
		case name == model.JobLabel, name == model.InstanceLabel, name == LabelHost, name == LabelWorker,
			strings.HasPrefix(name, model.ReservedLabelPrefix):
			continue
		}
		if r.Labels == nil {
			r.Labels = map[string]string{}
		}
		r.Labels[name] = value
	}
	return r
}

func compareEntries(a, b *entry) int { return strings.Compare(a.t.Source, b.t.Source) }

// selectSmallest reorders es so that its first k are the k smallest by
// key, in no order (quickselect): a page near the start of 100,000
// registrations costs a pass, not a sort of all of them.
func selectSmallest(es []*entry, k int) {
	lo, hi := 0, len(es)-1
	for lo < hi && k > lo && k <= hi {
		p := es[lo+(hi-lo)/2].t.Source
		i, j := lo, hi
		for i <= j {
			for es[i].t.Source < p {
				i++
			}
			for es[j].t.Source > p {
				j--
			}
			if i <= j {
				es[i], es[j] = es[j], es[i]
				i++
				j--
			}
		}
		// es[lo..j] <= p <= es[i..hi]
		switch {
		case k <= j+1:
			hi = j
		case k >= i:
			lo = i
		default:
			return
		}
	}
}
