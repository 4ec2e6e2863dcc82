package etcdsd

import (
	"context"
	"fmt"
	"runtime"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"

	"github.com/workersd/workersd/registrar"
	"github.com/workersd/workersd/sdfile"
)

// listed returns n registrations as etcd lists them.
func listed(b *testing.B, n int) []*mvccpb.KeyValue {
	return listedFrom(b, 0, n)
}

// listedFrom returns registrations from to from+n, shaped as a registrar
// writes them (bench/fleet's): an own metrics path and one label.
func listedFrom(b *testing.B, from, n int) []*mvccpb.KeyValue {
	kvs := make([]*mvccpb.KeyValue, n)
	for j := range kvs {
		i := from + j
		v := value(b, registrar.Value{
			Address: fmt.Sprintf("10.%d.%d.%d:%d", i>>16&255, i>>8&255, i&255, 20000+i%40000), PID: 1000 + i,
			MetricsPath: registrar.OwnMetricsPath(1000 + i),
			StartedAt:   time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC), Labels: map[string]string{"version": "1.4.2"},
		})
		kvs[j] = kv(fmt.Sprintf("job-%d/host-%d/%d", i%10, i/100, i%100), v, int64(i+2), int64(i+2))
	}
	return kvs
}

// The memory sdwriter keeps per registration: 250,000 listed a page at a
// time into the discovery state and handed to a Syncer of 4 shards, which
// renders them (no file); the live heap after a collection, divided by the
// registrations. Issue 27 asks at most 1 KiB of peak RSS per registration,
// about twice this (the garbage collector lets the heap grow to twice what
// is live, GOGC=100).
func BenchmarkMemoryPerRegistration250k(b *testing.B) {
	const n, page = 250_000, 2000
	for b.Loop() {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		st := newState(testPrefix, NewMetrics(nil))
		st.beginList(false)
		for from := 0; from < n; from += page {
			st.listPage(listedFrom(b, from, page))
		}
		st.endList()
		syncer := sdfile.New(sdfile.Options{Shards: 4})
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); syncer.Run(ctx) }()
		syncer.UpdateTargets(st.flushTargets(), time.Now())
		for _, next := syncer.Output(); !syncer.Ready(); {
			<-next
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/n, "live-bytes/registration")
		cancel()
		<-done
		runtime.KeepAlive(st)
		runtime.KeepAlive(syncer)
	}
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
		if n := len(st.flushTargets()); n != 1 {
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
