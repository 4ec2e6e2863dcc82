package etcdsd

import (
	"encoding/json"
	"slices"
	"strconv"
	"testing"
	"unicode/utf8"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/discovery/targetgroup"
	"go.etcd.io/etcd/api/v3/mvccpb"

	"github.com/workersd/workersd/registrar"
	"github.com/workersd/workersd/sdfile"
)

// FuzzDecodeRender feeds arbitrary keys and values through the path every
// etcd entry takes, decode and state and rendering, and checks that the
// output is always what Prometheus' file_sd reader accepts: an invalid entry
// yields no target and a valid one exactly the labels it may set. The seed
// corpus is in testdata/fuzz/FuzzDecodeRender; run with
//
//	go test -fuzz FuzzDecodeRender ./etcdsd
func FuzzDecodeRender(f *testing.F) {
	f.Add(testPrefix+"api/web-1/3", []byte(`{"address":"10.0.0.5:40211","scheme":"http","metrics_path":"/metrics","pid":4242,"started_at":"2026-11-21T10:00:00Z","labels":{"version":"1.4.2"}}`))
	f.Add(testPrefix+"api/web-1/0", []byte(`{"address":"[::1]:1","scheme":"https","metrics_path":"/m?x"}`))
	f.Add(testPrefix+"api/web-1/1", []byte(`{"address":"h:1","labels":{"__address__":"evil:1"}}`))
	f.Add(testPrefix+"api/web-1/1", []byte(`{"address":"h:1","labels":{"job":"other"}}`))
	f.Add(testPrefix+"api/web-1/01", []byte(`{"address":"h:1"}`))
	f.Add(testPrefix+"a\xff/h/1", []byte(`{"address":"h:1"}`))
	f.Add(testPrefix+"a/h/1", []byte("{\"address\":\"h:1\",\"labels\":{\"v\":\"\xff\"}}"))
	f.Add(testPrefix+"a/h/1", []byte(`{"address":"h:1"} {}`))
	f.Fuzz(func(t *testing.T, key string, value []byte) {
		st := newState(testPrefix, NewMetrics(nil))
		st.put(&mvccpb.KeyValue{Key: []byte(key), Value: value, CreateRevision: 1, ModRevision: 1})
		groups := st.flush()
		out := sdfile.Render(groups)

		var parsed []*targetgroup.Group
		if err := json.Unmarshal(out, &parsed); err != nil {
			t.Fatalf("output does not parse as file_sd: %v\n%s", err, out)
		}
		r, err := registrar.Decode(testPrefix, []byte(key), value)
		if err != nil {
			if len(parsed) != 0 {
				t.Fatalf("invalid entry (%v) rendered as %s", err, out)
			}
			if len(st.invalid) != 1 {
				t.Fatalf("invalid entry not recorded: %v", err)
			}
			for _, inv := range st.invalid {
				if !slices.Contains(invalidReasons, inv.reason) || inv.reason == "other" {
					t.Fatalf("reason %q for %v", inv.reason, err)
				}
			}
			return
		}
		if len(parsed) != 1 || len(parsed[0].Targets) != 1 {
			t.Fatalf("valid entry rendered as %s", out)
		}
		g := parsed[0]
		if got := string(g.Targets[0][model.AddressLabel]); got != r.Address {
			t.Fatalf("address %q, registered %q", got, r.Address)
		}
		want := map[model.LabelName]string{
			"job": r.Job, "instance": r.Host + "/" + strconv.Itoa(r.Slot), "host": r.Host,
			"worker": strconv.Itoa(r.Slot),
		}
		for name, v := range want {
			if got := string(g.Labels[name]); got != v {
				t.Fatalf("label %s = %q, want %q", name, got, v)
			}
		}
		for name, v := range g.Labels {
			if !model.LegacyValidation.IsValidLabelName(string(name)) || !utf8.ValidString(string(v)) {
				t.Fatalf("invalid label %q=%q", name, v)
			}
			if _, user := r.Labels[string(name)]; !user && want[name] == "" &&
				name != model.SchemeLabel && name != model.MetricsPathLabel {
				t.Fatalf("label %q set by nobody", name)
			}
		}
	})
}
