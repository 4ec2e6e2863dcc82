package registrar_test

import (
	"context"
	"fmt"
	"os"
	"sort"
	"testing"
	"time"

	"github.com/workersd/workersd/internal/testing/etcdtest"
	"github.com/workersd/workersd/registrar"
)

// BenchmarkRegisterToVisible measures Register() to the key being readable in
// etcd (WaitRegistered returns once the claiming transaction committed), with
// embedded etcd on loopback. Each iteration is a fresh registrar on the same
// (job, host), deregistered afterwards, as a restarting worker would be.
//
//	go test -run '^$' -bench RegisterToVisible -benchtime 200x ./registrar
func BenchmarkRegisterToVisible(b *testing.B) {
	etcd := etcdtest.Start(b)
	cli := etcd.Client(b)
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		r, err := registrar.New(registrar.Config{Client: cli, Job: "bench", Host: "h", TTL: 10 * time.Second,
			Value: registrar.Value{Address: fmt.Sprintf("127.0.0.1:%d", 10000+i%50000), PID: os.Getpid()}})
		if err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		r.Register(context.Background())
		if err := r.WaitRegistered(context.Background()); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(start))
		b.StopTimer()
		if err := r.Deregister(context.Background()); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	b.StopTimer()
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
}

// BenchmarkKeepAliveLoad counts the keep-alive requests etcd receives from
// registrars at the default TTL, read from etcd's own gRPC server metrics.
// Each iteration holds 100 registrations for 30 s.
//
//	go test -run '^$' -bench KeepAliveLoad -benchtime 1x ./registrar
func BenchmarkKeepAliveLoad(b *testing.B) {
	const workers, window = 100, 30 * time.Second
	etcd := etcdtest.Start(b)
	cli := etcd.Client(b)
	for i := 0; i < b.N; i++ {
		rs := make([]*registrar.Registrar, workers)
		for j := range rs {
			r, err := registrar.New(registrar.Config{Client: cli, Job: "ka", Host: "h",
				Value: registrar.Value{Address: fmt.Sprintf("127.0.0.1:%d", 20000+j)}})
			if err != nil {
				b.Fatal(err)
			}
			r.Register(context.Background())
			if err := r.WaitRegistered(context.Background()); err != nil {
				b.Fatal(err)
			}
			rs[j] = r
		}
		before := etcdtest.KeepAlivesReceived(b)
		time.Sleep(window) // the measurement window itself
		after := etcdtest.KeepAlivesReceived(b)
		for _, r := range rs {
			_ = r.Deregister(context.Background())
		}
		b.ReportMetric((after-before)/window.Seconds()/workers, "keepalives/s/worker")
	}
}
