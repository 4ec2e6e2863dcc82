package sdfile

import (
	"encoding/json"
	"fmt"
	"testing"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/discovery/targetgroup"
)

// benchGroups are n groups shaped like sdwriter's: one target, 6 labels.
func benchGroups(n int) []*targetgroup.Group {
	groups := make([]*targetgroup.Group, n)
	for i := range groups {
		key := fmt.Sprintf("/workersd/v1/job-%d/host-%d/%d", i%10, i/100, i%100)
		groups[i] = &targetgroup.Group{
			Source:  key,
			Targets: []model.LabelSet{{model.AddressLabel: model.LabelValue(fmt.Sprintf("10.%d.%d.%d:%d", i>>16&255, i>>8&255, i&255, 20000+i%40000))}},
			Labels: model.LabelSet{
				"job": model.LabelValue(fmt.Sprintf("job-%d", i%10)), "instance": model.LabelValue(fmt.Sprintf("host-%d/%d", i/100, i%100)),
				"host": model.LabelValue(fmt.Sprintf("host-%d", i/100)), "worker": model.LabelValue(fmt.Sprint(i % 100)),
				"version": "1.4.2", "__metrics_path__": model.LabelValue(fmt.Sprintf("/metrics/%d-%016x", 1000+i, uint64(i)*0x9e3779b97f4a7c15)),
			},
		}
	}
	return groups
}

// Full render of 10,000 groups from scratch (what a first sync costs).
func BenchmarkRender10k(b *testing.B) {
	groups := benchGroups(10_000)
	b.ReportAllocs()
	for b.Loop() {
		Render(groups)
	}
}

// One changed group, then the whole output (what each watch event costs).
func BenchmarkStoreUpdate10k(b *testing.B) {
	groups := benchGroups(10_000)
	s := NewStore()
	s.Apply(groups)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		s.Apply(groups[i%len(groups) : i%len(groups)+1])
		s.Bytes()
		i++
	}
}

// What each write of the output costs Prometheus: file_sd's parse of the
// whole file (encoding/json into target groups, as discovery/file does),
// at 10,000 and 100,000 targets. The write rate of large outputs
// (Options.WriteRate) is set from this figure; docs/SCALING.md has it.
func BenchmarkPrometheusParse(b *testing.B) {
	for _, n := range []int{10_000, 100_000} {
		data := Render(benchGroups(n))
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			b.ReportAllocs()
			for b.Loop() {
				var groups []*targetgroup.Group
				if err := json.Unmarshal(data, &groups); err != nil {
					b.Fatal(err)
				}
				if len(groups) != n {
					b.Fatalf("%d groups, want %d", len(groups), n)
				}
			}
			b.ReportMetric(float64(len(data))/(1<<20), "MiB")
		})
	}
}
