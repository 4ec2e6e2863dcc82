package sdfile

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/discovery/targetgroup"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/relabel"

	"github.com/workersd/workersd/internal/testing/metrictest"
)

// Shard agrees with Prometheus' own hashmod relabelling (the code of the
// Prometheus module, not a copy) on every instance tried, for 2 to 7
// shards.
func TestShardIsPrometheusHashmod(t *testing.T) {
	for n := 2; n <= 7; n++ {
		cfg := &relabel.Config{
			SourceLabels: model.LabelNames{model.InstanceLabel},
			Separator:    relabel.DefaultRelabelConfig.Separator,
			Modulus:      uint64(n),
			TargetLabel:  "__tmp_shard",
			Action:       relabel.HashMod,
		}
		if err := cfg.Validate(model.UTF8Validation); err != nil {
			t.Fatal(err)
		}
		seen := map[int]bool{}
		for i := range 500 {
			inst := fmt.Sprintf("web-%d.example.com/%d", i/20, i%20)
			if i == 0 {
				inst = "" // a target without an instance label
			}
			lset := labels.FromStrings(model.AddressLabel, "10.0.0.1:9100", model.InstanceLabel, inst)
			if inst == "" {
				lset = labels.FromStrings(model.AddressLabel, "10.0.0.1:9100")
			}
			lb := labels.NewBuilder(lset)
			if !relabel.ProcessBuilder(lb, cfg) {
				t.Fatal("hashmod dropped a target")
			}
			want, err := strconv.Atoi(lb.Labels().Get("__tmp_shard"))
			if err != nil {
				t.Fatal(err)
			}
			if got := Shard(inst, n); got != want {
				t.Fatalf("Shard(%q, %d) = %d, Prometheus says %d", inst, n, got, want)
			}
			seen[want] = true
		}
		if len(seen) != n {
			t.Errorf("500 instances fell into %d of %d shards", len(seen), n)
		}
	}
}

func TestShardFile(t *testing.T) {
	for _, tc := range []struct {
		file string
		k, n int
		want string
	}{
		{"/var/lib/workersd/targets/workersd.json", 0, 1, "/var/lib/workersd/targets/workersd.json"},
		{"/var/lib/workersd/targets/workersd.json", 1, 4, "/var/lib/workersd/targets/shard-1-of-4/workersd.json"},
		{"out", 2, 3, "shard-2-of-3/out"},
		{"", 0, 2, ""},
	} {
		if got := ShardFile(tc.file, tc.k, tc.n); got != tc.want {
			t.Errorf("ShardFile(%q, %d, %d) = %q, want %q", tc.file, tc.k, tc.n, got, tc.want)
		}
	}
}

// With 4 shards, each file and each /sd?shard=k holds exactly the targets
// whose instance hashes to k, a group's targets are split by their own
// instance, and a removed source leaves every shard.
func TestSyncerShards(t *testing.T) {
	const n = 4
	path := filepath.Join(t.TempDir(), "workersd.json")
	m := NewMetrics(nil)
	s := startSyncer(t, Options{File: path, Shards: n, Metrics: m})
	var groups []*targetgroup.Group
	want := make([][]string, n)
	for i := range 200 {
		inst := fmt.Sprintf("h%d/%d", i/10, i%10)
		addr := fmt.Sprintf("10.0.%d.%d:9100", i/250, i%250)
		groups = append(groups, group(fmt.Sprintf("/k/%d", i), []string{addr}, model.LabelSet{"job": "j", "instance": model.LabelValue(inst)}))
		want[Shard(inst, n)] = append(want[Shard(inst, n)], addr)
	}
	// One group with two targets of their own instances, in two shards.
	two := &targetgroup.Group{Source: "/k/two", Labels: model.LabelSet{"job": "j"}, Targets: []model.LabelSet{
		{model.AddressLabel: "192.0.2.1:1", model.InstanceLabel: "a"},
		{model.AddressLabel: "192.0.2.2:1", model.InstanceLabel: "b"},
	}}
	if Shard("a", n) == Shard("b", n) {
		t.Fatal("pick two instances in different shards")
	}
	want[Shard("a", n)] = append(want[Shard("a", n)], "192.0.2.1:1")
	want[Shard("b", n)] = append(want[Shard("b", n)], "192.0.2.2:1")
	s.Update(append(groups, two), time.Now())

	check := func(want [][]string) {
		t.Helper()
		outs := waitShards(t, s, func(outs [][]byte) bool {
			total := 0
			for _, o := range outs {
				total += len(addresses(t, o))
			}
			w := 0
			for _, a := range want {
				w += len(a)
			}
			return total == w
		})
		for k := range n {
			file := ShardFile(path, k, n)
			b, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(b, outs[k]) {
				t.Errorf("%s differs from shard %d's output", file, k)
			}
			rec := httptest.NewRecorder()
			s.ServeHTTP(rec, httptest.NewRequest("GET", "/sd?shard="+strconv.Itoa(k), nil))
			if rec.Code != 200 || !bytes.Equal(rec.Body.Bytes(), b) {
				t.Errorf("/sd?shard=%d: %d, body differs from the file: %v", k, rec.Code, !bytes.Equal(rec.Body.Bytes(), b))
			}
			got := addresses(t, b)
			w := slices.Sorted(slices.Values(want[k]))
			if !slices.Equal(got, w) {
				t.Errorf("shard %d holds %d targets %v, want %d %v", k, len(got), got, len(w), w)
			}
		}
	}
	check(want)
	if got := metrictest.Value(m.Targets); got != 202 {
		t.Errorf("targets metric = %v, want 202 (all shards)", got)
	}
	if got := metrictest.Value(m.Jobs); got != 1 {
		t.Errorf("jobs metric = %v, want 1 (one job across shards)", got)
	}

	// The two-target group goes; its targets leave their shards.
	s.Update([]*targetgroup.Group{{Source: "/k/two"}}, time.Now())
	want[Shard("a", n)] = want[Shard("a", n)][:len(want[Shard("a", n)])-1]
	want[Shard("b", n)] = want[Shard("b", n)][:len(want[Shard("b", n)])-1]
	check(want)

	for _, q := range []string{"", "?shard=4", "?shard=-1", "?shard=x"} {
		rec := httptest.NewRecorder()
		s.ServeHTTP(rec, httptest.NewRequest("GET", "/sd"+q, nil))
		if rec.Code != http.StatusBadRequest || !bytes.Contains(rec.Body.Bytes(), []byte("?shard=3")) {
			t.Errorf("/sd%s: %d %q, want 400 naming the shards", q, rec.Code, rec.Body)
		}
	}
}

func waitShards(t *testing.T, s *Syncer, ok func([][]byte) bool) [][]byte {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		outs, next := s.ShardOutputs()
		if outs[0] != nil && ok(outs) {
			return outs
		}
		select {
		case <-next:
		case <-deadline:
			t.Fatal("shard outputs never as expected")
		}
	}
}

// addresses lists the target addresses of a file_sd JSON output, sorted.
func addresses(t *testing.T, b []byte) []string {
	t.Helper()
	if b == nil {
		return nil
	}
	var groups []struct {
		Targets []string `json:"targets"`
	}
	if err := json.Unmarshal(b, &groups); err != nil {
		t.Fatalf("%v in %q", err, b)
	}
	var out []string
	for _, g := range groups {
		out = append(out, g.Targets...)
	}
	slices.Sort(out)
	return out
}

func TestWriteWait(t *testing.T) {
	for _, tc := range []struct {
		rate, above int64
		n           int
		want        time.Duration
	}{
		{DefaultWriteRate, DefaultCoalesceAbove, 200 << 10, 0},                   // 1,000 targets: at once
		{DefaultWriteRate, DefaultCoalesceAbove, 1 << 20, 0},                     // at the threshold
		{DefaultWriteRate, DefaultCoalesceAbove, 7 << 20, time.Second},           // 6 MiB over
		{DefaultWriteRate, DefaultCoalesceAbove, 19 << 20, 18 * time.Second / 6}, // 100,000 targets
		{DefaultWriteRate, DefaultCoalesceAbove, 200 << 20, MaxWriteWait},        // capped
		{-1, DefaultCoalesceAbove, 200 << 20, 0},                                 // off
		{1 << 20, 1, 1<<20 + 1, time.Second},                                     // custom
	} {
		s := New(Options{WriteRate: tc.rate, CoalesceAbove: tc.above})
		if got := s.writeWait(tc.n); got != tc.want {
			t.Errorf("rate %d, above %d: writeWait(%d) = %v, want %v", tc.rate, tc.above, tc.n, got, tc.want)
		}
	}
}

// A large output is written once for a burst of changes: the first change
// at once, the rest together after the wait its size calls for; the file
// then holds every change.
func TestSyncerCoalescesLargeOutputs(t *testing.T) {
	path := filepath.Join(t.TempDir(), "t.json")
	m := NewMetrics(nil)
	var groups []*targetgroup.Group
	for i := range 1000 {
		groups = append(groups, group(fmt.Sprint(i), []string{fmt.Sprintf("10.0.%d.%d:9100", i/250, i%250)}, model.LabelSet{"job": "j"}))
	}
	size := len(Render(groups))
	// The wait after a write of the whole output: one second.
	s := New(Options{File: path, Metrics: m, CoalesceAbove: 1, WriteRate: int64(size - 1)})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })

	start := time.Now()
	s.Update(groups, time.Now())
	waitOutput(t, s, func(b []byte) bool { return bytes.Contains(b, []byte(`"10.0.3.231:9100"`)) })
	first := time.Since(start)
	for i := range 50 {
		s.Update([]*targetgroup.Group{group(fmt.Sprint(i), []string{fmt.Sprintf("192.0.2.%d:1", i)}, model.LabelSet{"job": "j"})}, time.Now())
	}
	out := waitOutput(t, s, func(b []byte) bool { return bytes.Contains(b, []byte(`"192.0.2.49:1"`)) })
	second := time.Since(start)
	for i := range 50 {
		if !bytes.Contains(out, fmt.Appendf(nil, `"192.0.2.%d:1"`, i)) {
			t.Errorf("change %d is not in the coalesced write", i)
		}
	}
	if got := metrictest.Value(m.Writes); got != 2 {
		t.Errorf("the first change and a burst of 50 took %v writes, want 2", got)
	}
	if second < time.Second {
		t.Errorf("the burst was written %v after the first write began, before the 1s wait", second)
	}
	if first > 500*time.Millisecond {
		t.Logf("the first change took %v (a loaded machine?)", first)
	}
	if got, want := metrictest.Value(m.WrittenBytes), float64(size+len(out)); got != want {
		t.Errorf("written bytes = %v, want %v (both writes)", got, want)
	}
}
