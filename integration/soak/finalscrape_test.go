//go:build linux

package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/workersd/workersd/internal/testing/etcdtest"
	"github.com/workersd/workersd/worker"
)

// TestFinalScrapeThatNeverArrived is what the soak found with seed 202
// (docs/SOAK.md, "Found"): a worker took a scrape whose answer never
// reached its scraper for its final scrape, deregistered, and its last
// counts were lost. Here a scraper sends its request after Stop began and
// its answer does not reach it; Stop must not count that scrape, and must
// return once a later scrape was received whole.
//
//   - unread: the scraper's receive buffer is small and it reads nothing,
//     so the answer sits unacknowledged in the kernels' buffers (as on a
//     cut link): the worker wrote it all, but the scraper's timeout
//     (X-Prometheus-Scrape-Timeout-Seconds: 1) passes without it.
//   - cut off: the answer is far larger than the buffers; the scraper reads
//     its first bytes and resets the connection, as Prometheus does when
//     its scrape times out.
func TestFinalScrapeThatNeverArrived(t *testing.T) {
	etcd := etcdtest.Start(t)
	for _, tc := range []struct {
		name    string
		padding int
		read    int // bytes the bad scraper reads before it resets
	}{
		{name: "unread", padding: 0, read: 0},
		{name: "cut off", padding: 100_000, read: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			notDelivered := make(chan string, 16)
			log := hclog.New(&hclog.LoggerOptions{Level: hclog.Debug, Output: lineWriter(func(line string) {
				t.Log(strings.TrimSpace(line))
				if strings.Contains(line, "not delivered in time") {
					select {
					case notDelivered <- line:
					default:
					}
				}
			})})
			timeout := 20 * time.Second
			w, err := worker.Start(context.Background(), worker.Config{Job: "repro", Host: "h", Logger: log,
				EtcdEndpoints: []string{etcd.Endpoint()}, ListenAddress: "127.0.0.1:0", FinalScrapeTimeout: &timeout})
			if err != nil {
				t.Fatal(err)
			}
			g := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "repro_padding", Help: "Padding."}, []string{"i"})
			w.Registry().MustRegister(g)
			for i := range tc.padding {
				g.WithLabelValues(strconv.Itoa(i)).Set(float64(i))
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := w.WaitRegistered(ctx); err != nil {
				t.Fatal(err)
			}

			stopped := make(chan time.Time, 1)
			go func() {
				w.Stop(context.Background())
				stopped <- time.Now()
			}()
			select { // Stop has begun: every scrape from now on may be its final one
			case <-w.Stopping():
			case <-time.After(10 * time.Second):
				t.Fatal("Stop did not begin within 10s")
			}

			// The bad scrape.
			d := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
				return rc.Control(func(fd uintptr) { syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 1024) })
			}}
			c, err := d.Dial("tcp", w.Addr())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: x\r\nX-Prometheus-Scrape-Timeout-Seconds: 1\r\n\r\n", w.MetricsPath())
			if tc.read > 0 {
				c.SetReadDeadline(time.Now().Add(10 * time.Second))
				// On a loaded machine the worker's write deadline (0.9 s
				// here) may end before this reads: the answer is then not
				// delivered all the same, which is what is checked below.
				if _, err := io.ReadFull(c, make([]byte, tc.read)); err != nil {
					t.Logf("reading the first byte: %v", err)
				}
				c.(*net.TCPConn).SetLinger(0) // RST, the rest unread
				c.Close()
			}
			select {
			case at := <-stopped:
				t.Fatalf("Stop returned (%s) after a scrape whose answer was never read: it took that scrape for the final scrape", at.Format(time.StampMilli))
			case line := <-notDelivered:
				t.Logf("the bad scrape did not count: %s", strings.TrimSpace(line))
			case <-time.After(10 * time.Second):
				t.Fatal("the undelivered scrape was neither counted nor refused within 10s")
			}
			c.Close()
			select {
			case <-stopped:
				t.Fatal("Stop returned without a delivered scrape")
			default:
			}

			// A scrape that is received whole is the final one.
			req, _ := http.NewRequest("GET", "http://"+w.Addr()+w.MetricsPath(), nil)
			req.Header.Set("X-Prometheus-Scrape-Timeout-Seconds", "5")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil || resp.StatusCode != 200 || !bytes.Contains(body, []byte("go_goroutines")) {
				t.Fatalf("good scrape: status %d, %d bytes, %v", resp.StatusCode, len(body), err)
			}
			select {
			case <-stopped:
			case <-time.After(10 * time.Second):
				t.Fatal("Stop did not return within 10s of a delivered scrape")
			}
		})
	}
}

// lineWriter calls f with each write (hclog writes a line at a time).
type lineWriter func(string)

var lineMu sync.Mutex

func (f lineWriter) Write(b []byte) (int, error) {
	lineMu.Lock()
	defer lineMu.Unlock()
	f(string(b))
	return len(b), nil
}
