package etcdsd

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/discovery/targetgroup"
	"go.etcd.io/etcd/api/v3/mvccpb"

	"github.com/workersd/workersd/internal/testing/metrictest"
	"github.com/workersd/workersd/registrar"
	"github.com/workersd/workersd/sdfile"
)

const testPrefix = "/workersd/v1/"

func value(t testing.TB, v registrar.Value) []byte {
	t.Helper()
	b, err := v.Encode()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func kv(key string, val []byte, create, mod int64) *mvccpb.KeyValue {
	return &mvccpb.KeyValue{Key: []byte(testPrefix + key), Value: val, CreateRevision: create, ModRevision: mod}
}

// sources summarises a flush: "+key" for a group shown, "-key" for removed.
func sources(groups []*targetgroup.Group) []string {
	var out []string
	for _, g := range groups {
		sign := "+"
		if len(g.Targets) == 0 {
			sign = "-"
		}
		out = append(out, sign+strings.TrimPrefix(g.Source, testPrefix))
	}
	return out
}

func checkFlush(t *testing.T, st *state, want ...string) {
	t.Helper()
	if got := sources(st.flush()); !reflect.DeepEqual(got, want) {
		t.Errorf("flush = %v, want %v", got, want)
	}
}

func TestTargetGroup(t *testing.T) {
	started := time.Date(2026, 11, 21, 10, 0, 0, 0, time.FixedZone("CET", 3600))
	r := registrar.Registration{
		Key: registrar.Key{Prefix: testPrefix, Job: "api", Host: "web-1", Slot: 3},
		Value: registrar.Value{
			Address: "10.0.0.5:40211", Scheme: "https", MetricsPath: "/m", PID: 4242, StartedAt: started,
			Labels: map[string]string{"version": "1.4.2"},
		},
	}
	want := &targetgroup.Group{
		Source:  "/workersd/v1/api/web-1/3",
		Targets: []model.LabelSet{{"__address__": "10.0.0.5:40211"}},
		Labels: model.LabelSet{
			"job": "api", "instance": "web-1/3", "host": "web-1", "worker": "3", "version": "1.4.2",
			"__scheme__": "https", "__metrics_path__": "/m",
		},
	}
	if got := TargetGroup(r, TargetOptions{}); !reflect.DeepEqual(got, want) {
		t.Errorf("TargetGroup =\n%v\nwant\n%v", got, want)
	}
	// For the Prometheus Operator's sharding: the instance, not the
	// address, and only when asked.
	want.Labels["__tmp_hash"] = "web-1/3"
	if got := TargetGroup(r, TargetOptions{TmpHash: true}); !reflect.DeepEqual(got, want) {
		t.Errorf("TargetGroup with TmpHash =\n%v\nwant\n%v", got, want)
	}

	// Defaults (http, /metrics) and absent facts add no labels.
	r.Value = registrar.Value{Address: "[::1]:9", Scheme: "http", MetricsPath: "/metrics"}
	got := TargetGroup(r, TargetOptions{})
	wantLabels := model.LabelSet{
		"job": "api", "instance": "web-1/3", "host": "web-1", "worker": "3",
	}
	if !reflect.DeepEqual(got.Labels, wantLabels) {
		t.Errorf("labels with defaults = %v, want %v", got.Labels, wantLabels)
	}
}

func TestStateDuplicates(t *testing.T) {
	st := newState(testPrefix, NewMetrics(nil))
	same := value(t, registrar.Value{Address: "10.0.0.1:1"})
	st.put(kv("j/h/0", same, 5, 5))
	checkFlush(t, st, "+j/h/0")
	// A successor with the same address, created later, replaces it.
	st.put(kv("j/h/1", same, 7, 7))
	checkFlush(t, st, "-j/h/0", "+j/h/1")
	if got := metrictest.Value(st.m.Duplicates); got != 1 {
		t.Errorf("duplicates gauge = %v, want 1", got)
	}
	// The older one changing does not bring it back.
	st.put(kv("j/h/0", same, 5, 8))
	checkFlush(t, st)
	// The successor goes: the older one is the only one left for the address.
	st.del(testPrefix + "j/h/1")
	checkFlush(t, st, "+j/h/0", "-j/h/1")
	// Two keys created in one transaction: the key decides, for every reader.
	st.put(kv("j/h/2", same, 9, 9))
	st.put(kv("j/h/3", same, 9, 9))
	checkFlush(t, st, "-j/h/0", "+j/h/3")
	// An address change separates them again.
	st.put(kv("j/h/3", value(t, registrar.Value{Address: "10.0.0.2:2"}), 9, 10))
	checkFlush(t, st, "+j/h/2", "+j/h/3")
}

func TestStateInvalid(t *testing.T) {
	m := NewMetrics(nil)
	st := newState(testPrefix, m)
	var logged []string
	st.onError = func(key string, _ int64, reason string, _ error) { logged = append(logged, reason) }
	st.put(kv("j/h/0", value(t, registrar.Value{Address: "h:1"}), 2, 2))
	checkFlush(t, st, "+j/h/0")

	// The valid registration is overwritten by garbage: its target goes.
	st.put(kv("j/h/0", []byte("{"), 2, 3))
	st.put(kv("j/h/1", []byte(`{"address":"h:2","labels":{"__address__":"x"}}`), 4, 4))
	st.put(kv("not-a-key", value(t, registrar.Value{Address: "h:3"}), 5, 5))
	checkFlush(t, st, "-j/h/0")
	if want := []string{"value", "labels", "key"}; !reflect.DeepEqual(logged, want) {
		t.Errorf("logged reasons %v, want %v", logged, want)
	}
	// A re-list reads them again: not counted again.
	st.relist([]*mvccpb.KeyValue{kv("j/h/0", []byte("{"), 2, 3), kv("j/h/1", []byte(`{}`), 4, 4)}, false)
	checkFlush(t, st)
	if len(logged) != 3 || len(st.invalid) != 2 {
		t.Errorf("after re-list: logged %v, invalid %v", logged, st.invalid)
	}
	// A rebuilt etcd can reuse revisions: everything is decoded again.
	st.relist([]*mvccpb.KeyValue{kv("j/h/0", value(t, registrar.Value{Address: "h:9"}), 2, 3)}, true)
	checkFlush(t, st, "+j/h/0")
	if len(st.invalid) != 0 {
		t.Errorf("invalid entries left: %v", st.invalid)
	}
}

func TestStateRelist(t *testing.T) {
	st := newState(testPrefix, NewMetrics(nil))
	a := kv("j/h/0", value(t, registrar.Value{Address: "h:1"}), 2, 2)
	b := kv("j/h/1", value(t, registrar.Value{Address: "h:2"}), 3, 3)
	st.relist([]*mvccpb.KeyValue{a, b}, false)
	checkFlush(t, st, "+j/h/0", "+j/h/1")
	// Unchanged entries are not emitted again; a missing one is removed.
	c := kv("j/h/2", value(t, registrar.Value{Address: "h:3"}), 6, 6)
	st.relist([]*mvccpb.KeyValue{a, c}, false)
	checkFlush(t, st, "-j/h/1", "+j/h/2")
	st.relist(nil, false)
	checkFlush(t, st, "-j/h/0", "-j/h/2")
}

func TestLimiter(t *testing.T) {
	now := time.Unix(0, 0)
	l := newLimiter(time.Second, 2)
	l.now = func() time.Time { return now }
	for i, want := range []bool{true, true, false, false} {
		if ok, _ := l.allow(); ok != want {
			t.Errorf("call %d: allow = %v", i, ok)
		}
	}
	now = now.Add(time.Second)
	if ok, suppressed := l.allow(); !ok || suppressed != 2 {
		t.Errorf("after a second: allow = %v, suppressed = %d", ok, suppressed)
	}
}

// The updates a TargetSink gets, each naming the Target it replaces, keep
// a Store equal to a rendering of the registrations shown, whatever comes
// and goes: duplicates, invalid values, re-lists, a key's address changing.
func TestFlushTargetsKeepsAStoreExact(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	st := newState(testPrefix, NewMetrics(nil))
	store := sdfile.NewStore()
	rev := int64(1)
	live := map[string]*mvccpb.KeyValue{}
	for step := range 3000 {
		key := fmt.Sprintf("job-%d/host-%d/%d", rng.IntN(2), rng.IntN(4), rng.IntN(6))
		rev++
		switch n := rng.IntN(10); {
		case n < 3:
			st.del(testPrefix + key)
			delete(live, testPrefix+key)
		case n < 4:
			kv := kv(key, []byte(`{"address":`), rev, rev)
			st.put(kv)
			delete(live, testPrefix+key)
		case n < 5 && step%7 == 0:
			var kvs []*mvccpb.KeyValue
			for _, kv := range live {
				kvs = append(kvs, kv)
			}
			st.relist(kvs, false)
		default:
			v := value(t, registrar.Value{Address: fmt.Sprintf("10.0.0.%d:9100", rng.IntN(30)), Labels: map[string]string{"n": fmt.Sprint(rng.IntN(3))}})
			kv := kv(key, v, rev, rev)
			st.put(kv)
			live[testPrefix+key] = kv
		}
		for _, u := range st.flushTargets() {
			store.ApplyUpdate(u)
		}
		var shown []*targetgroup.Group
		for _, e := range st.entries {
			if st.winner(e.addr) == e {
				r, err := registrar.Decode(testPrefix, []byte(e.t.Source), live[e.t.Source].Value)
				if err != nil {
					t.Fatal(err)
				}
				shown = append(shown, TargetGroup(r, TargetOptions{}))
			}
		}
		if got, want := store.Bytes(), sdfile.Render(shown); !bytes.Equal(got, want) {
			t.Fatalf("step %d: the Store holds\n%s\nwant\n%s", step, got, want)
		}
		if store.Len() != len(shown) || st.inSink != len(shown) {
			t.Fatalf("step %d: Store.Len %d, inSink %d, shown %d", step, store.Len(), st.inSink, len(shown))
		}
	}
}

// The target options reach what the state renders (sdwriter
// --output.tmp-hash): each target carries __tmp_hash = its instance, and
// without the option none does.
func TestStateRendersTargetOptions(t *testing.T) {
	for _, on := range []bool{false, true} {
		st := newState(testPrefix, NewMetrics(nil))
		st.target = TargetOptions{TmpHash: on}
		st.put(kv("j/h/3", value(t, registrar.Value{Address: "10.0.0.1:9"}), 2, 2))
		updates := st.flushTargets()
		if len(updates) != 1 || updates[0].New == nil {
			t.Fatalf("updates %+v, want the one target", updates)
		}
		got, has := parse(updates[0].New).Labels[LabelTmpHash]
		if has != on || (on && got != "h/3") {
			t.Errorf("TmpHash %v: __tmp_hash %q (present %v) in %s", on, got, has, updates[0].New.Data)
		}
	}
}
