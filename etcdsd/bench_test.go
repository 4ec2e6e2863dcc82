package etcdsd

import (
	"fmt"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"

	"github.com/workersd/workersd/registrar"
)

// listed returns n registrations as etcd lists them.
func listed(b *testing.B, n int) []*mvccpb.KeyValue {
	kvs := make([]*mvccpb.KeyValue, n)
	for i := range kvs {
		v := value(b, registrar.Value{
			Address: fmt.Sprintf("10.%d.%d.%d:%d", i>>16&255, i>>8&255, i&255, 20000+i%40000), PID: 1000 + i,
			StartedAt: time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC), Labels: map[string]string{"version": "1.4.2"},
		})
		kvs[i] = kv(fmt.Sprintf("job-%d/host-%d/%d", i%10, i/100, i%100), v, int64(i+2), int64(i+2))
	}
	return kvs
}

// One watch event (a registration replaced) and its flush, after an initial
// listing of 100,000: what each change costs sdwriter's discovery. It must
// not depend on the number of registrations (issue 13: it did, 150 µs a
// change, when the flush ranged over maps cleared after the listing).
func BenchmarkEventAfterListing100k(b *testing.B) {
	kvs := listed(b, 100_000)
	st := newState(testPrefix, NewMetrics(nil))
	st.relist(kvs, false)
	st.flush()
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		old := kvs[i%len(kvs)]
		rev := int64(len(kvs) + 2 + i)
		st.put(&mvccpb.KeyValue{Key: old.Key, Value: old.Value, CreateRevision: rev, ModRevision: rev})
		if n := len(st.flush()); n != 1 {
			b.Fatalf("%d groups for one change", n)
		}
		i++
	}
}

// Decoding 10,000 listed registrations into target groups (the CPU side of
// an initial sync, without etcd).
func BenchmarkInitialList10k(b *testing.B) {
	kvs := listed(b, 10_000)
	b.ReportAllocs()
	for b.Loop() {
		st := newState(testPrefix, NewMetrics(nil))
		st.relist(kvs, false)
		if n := len(st.flush()); n != len(kvs) {
			b.Fatal(n)
		}
	}
}
