//go:build linux

package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/workersd/workersd/internal/etcdtest"
	"github.com/workersd/workersd/worker"
)

// TestFinalScrapeThatNeverArrived reproduces what the soak found with seed
// 202 (docs/SOAK.md, "Found"): a worker takes a scrape whose answer never
// reached its scraper for its final scrape. The scraper sends its request
// after Stop began, reads nothing and goes away (as Prometheus does when
// its scrape times out on a cut link); Stop returns as soon as the handler
// has handed the answer to the kernel (here before the scraper even went
// away), counting that scrape as the final one, instead of waiting for a
// scrape that was delivered. It is a reproduction of a bug to fix elsewhere, so it runs
// only with WORKERSD_SOAK_REPRO=1.
func TestFinalScrapeThatNeverArrived(t *testing.T) {
	if os.Getenv("WORKERSD_SOAK_REPRO") == "" {
		t.Skip("reproduction of a soak finding (docs/SOAK.md); WORKERSD_SOAK_REPRO=1 runs it")
	}
	etcd := etcdtest.Start(t)
	timeout := 10 * time.Second
	w, err := worker.Start(context.Background(), worker.Config{Job: "repro", Host: "h",
		EtcdEndpoints: []string{etcd.Endpoint()}, ListenAddress: "127.0.0.1:0", FinalScrapeTimeout: &timeout})
	if err != nil {
		t.Fatal(err)
	}
	// An answer far larger than the socket buffers: its write blocks
	// until the scraper reads or goes.
	g := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "repro_padding", Help: "Padding."}, []string{"i"})
	w.Registry().MustRegister(g)
	for i := range 100_000 {
		g.WithLabelValues(strconv.Itoa(i)).Set(float64(i))
	}
	cli := etcd.Client(t)
	for deadline := time.Now().Add(10 * time.Second); ; {
		resp, err := cli.Get(context.Background(), "/workersd/v1/repro/", clientv3.WithPrefix())
		if err == nil && len(resp.Kvs) == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("not registered within 10s")
		}
		time.Sleep(50 * time.Millisecond)
	}

	stopped := make(chan time.Duration, 1)
	began := time.Now()
	go func() {
		w.Stop(context.Background())
		stopped <- time.Since(began)
	}()
	time.Sleep(200 * time.Millisecond) // Stop has begun: the next scrape is its final one
	c, err := net.Dial("tcp", w.Addr())
	if err != nil {
		t.Fatal(err)
	}
	c.(*net.TCPConn).SetReadBuffer(4096)
	fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: x\r\n\r\n", w.MetricsPath())
	time.Sleep(2 * time.Second)
	c.(*net.TCPConn).SetLinger(0) // gone, as after a timeout: RST, nothing read
	c.Close()
	if d := <-stopped; d < timeout {
		t.Errorf("Stop returned %s after it began: it took a scrape whose answer was never read for the final scrape (want it to wait up to %s for one that was delivered)", d.Round(time.Millisecond), timeout)
	}
}
