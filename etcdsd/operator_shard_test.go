package etcdsd

import (
	"fmt"
	"strconv"
	"strings"
	"testing"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/relabel"
	"go.yaml.in/yaml/v2"

	"github.com/workersd/workersd/registrar"
	"github.com/workersd/workersd/sdfile"
)

// operatorSharding is the relabelling the Prometheus Operator appends to
// every scrape job, a ScrapeConfig's included, of a Prometheus with
// shards: 3 (its module at v0.94.0, appendShardingRelabelingWithLabel in
// pkg/prometheus/promcfg.go, with the shard label __address__). Its config
// reloader replaces $(SHARD) with the server's shard number. __tmp_hash is
// hashed when a target has it, else __address__.
const operatorSharding = `
- source_labels: [__address__, __tmp_hash]
  target_label: __tmp_hash
  regex: (.+);
  replacement: $1
  action: replace
- source_labels: [__tmp_hash]
  target_label: __tmp_hash
  modulus: 3
  action: hashmod
- source_labels: [__tmp_hash, __tmp_disable_sharding]
  regex: $(SHARD);|.+;.+
  action: keep
`

// With --output.tmp-hash, each instance is kept by exactly one of the
// operator's 3 shard servers, the same one whatever address, port and
// metrics path its successive workers register, and the one sdwriter's own
// --output.shards=3 puts it in; without it, restarts move instances
// between shards, which is why the flag exists.
func TestOperatorShardingKeepsInstanceOnOneShard(t *testing.T) {
	const shards = 3
	servers := make([][]*relabel.Config, shards)
	for k := range shards {
		var cfgs []*relabel.Config
		if err := yaml.UnmarshalStrict([]byte(strings.ReplaceAll(operatorSharding, "$(SHARD)", strconv.Itoa(k))), &cfgs); err != nil {
			t.Fatal(err)
		}
		for _, c := range cfgs {
			if err := c.Validate(model.UTF8Validation); err != nil {
				t.Fatal(err)
			}
		}
		servers[k] = cfgs
	}
	// keptBy returns the shard servers that keep r's target, as Prometheus
	// builds a target's labels: the group's, then the target's own.
	keptBy := func(r registrar.Registration, o TargetOptions) []int {
		g := TargetGroup(r, o)
		var kept []int
		for k, cfgs := range servers {
			lb := labels.NewBuilder(labels.EmptyLabels())
			for n, v := range g.Labels {
				lb.Set(string(n), string(v))
			}
			for n, v := range g.Targets[0] {
				lb.Set(string(n), string(v))
			}
			if relabel.ProcessBuilder(lb, cfgs...) {
				kept = append(kept, k)
			}
		}
		return kept
	}
	moved := 0
	for h := range 10 {
		for slot := range 8 {
			shard := -1
			for restart := range 6 {
				r := registrar.Registration{
					Key: registrar.Key{Prefix: registrar.DefaultPrefix, Job: "app", Host: fmt.Sprintf("app-7d9f8c6b5-%05d", h), Slot: slot},
					Value: registrar.Value{
						Address:     fmt.Sprintf("10.1.%d.%d:%d", h, 10+restart, 32768+restart*97+slot),
						MetricsPath: fmt.Sprintf("/metrics/%d-%016x", 100+restart*8+slot, restart),
					},
				}
				kept := keptBy(r, TargetOptions{TmpHash: true})
				if len(kept) != 1 {
					t.Fatalf("%s (restart %d) kept by shards %v, want exactly one", r.Instance(), restart, kept)
				}
				if restart == 0 {
					shard = kept[0]
					if want := sdfile.Shard(r.Instance(), shards); shard != want {
						t.Errorf("%s: operator shard %d, sdwriter's --output.shards puts it in %d", r.Instance(), shard, want)
					}
				} else if kept[0] != shard {
					t.Errorf("%s moved from shard %d to %d at restart %d", r.Instance(), shard, kept[0], restart)
				}
				if k := keptBy(r, TargetOptions{}); len(k) == 1 && k[0] != shard {
					moved++
				}
			}
		}
	}
	if moved == 0 {
		t.Error("without __tmp_hash no restart moved an instance: the test no longer shows why the flag exists")
	}
}
