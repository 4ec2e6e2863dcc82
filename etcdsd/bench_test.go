package etcdsd

import (
	"fmt"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"

	"github.com/workersd/workersd/registrar"
)

// Decoding 10,000 listed registrations into target groups (the CPU side of
// an initial sync, without etcd).
func BenchmarkInitialList10k(b *testing.B) {
	kvs := make([]*mvccpb.KeyValue, 10_000)
	for i := range kvs {
		v := value(b, registrar.Value{
			Address: fmt.Sprintf("10.%d.%d.%d:%d", i>>16&255, i>>8&255, i&255, 20000+i), PID: 1000 + i,
			StartedAt: time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC), Labels: map[string]string{"version": "1.4.2"},
		})
		kvs[i] = kv(fmt.Sprintf("job-%d/host-%d/%d", i%10, i/100, i%100), v, int64(i+2), int64(i+2))
	}
	b.ReportAllocs()
	for b.Loop() {
		st := newState(testPrefix, NewMetrics(nil))
		st.relist(kvs, false)
		if n := len(st.flush()); n != len(kvs) {
			b.Fatal(n)
		}
	}
}
