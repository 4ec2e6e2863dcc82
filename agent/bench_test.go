//go:build linux

package agent

import (
	"net/http"
	"slices"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/workersd/workersd/internal/testing/etcdtest"
	"github.com/workersd/workersd/registrar"
)

func quiet(c *Config) { c.Logger = hclog.NewNullLogger() }

// BenchmarkRegisterDeregister is one worker's API round trip through the
// Unix socket against real etcd: register (answered once the key is in
// etcd) and deregister (lease revoked, key gone).
func BenchmarkRegisterDeregister(b *testing.B) {
	h := newHarness(b, nil, quiet)
	c := child(b)
	body := map[string]any{"job": "bench", "port": 9000, "pid": c.Process.Pid}
	for b.Loop() {
		if code, w := h.do("POST", "/v1/workers", body); code != http.StatusCreated || w["state"] != "registered" {
			b.Fatalf("register: %d %v", code, w)
		}
		if code, _ := h.do("DELETE", "/v1/workers/"+strconv.Itoa(c.Process.Pid), nil); code != http.StatusOK {
			b.Fatalf("deregister: %d", code)
		}
	}
}

// BenchmarkExitToRemoval measures, per watch method, the time from SIGKILL
// of a registered process to the delete event of its key in etcd (the
// goal is 200 ms), reported as p50-ms and max-ms; ns/op includes starting
// and registering the process.
func BenchmarkExitToRemoval(b *testing.B) {
	for _, mode := range []string{"pidfd", "poll"} {
		b.Run(mode, func(b *testing.B) {
			h := newHarness(b, nil, func(c *Config) { quiet(c); c.DisablePidfd = mode == "poll" })
			var took []time.Duration
			for b.Loop() {
				c := child(b)
				code, w := h.do("POST", "/v1/workers", map[string]any{"job": "bench", "port": 9000, "pid": c.Process.Pid})
				if code != http.StatusCreated || w["state"] != "registered" {
					b.Fatalf("register: %d %v", code, w)
				}
				gone := watchDelete(b, h.cli, w["key"].(string))
				killed := time.Now()
				c.Process.Signal(syscall.SIGKILL)
				select {
				case at := <-gone:
					took = append(took, at.Sub(killed))
				case <-time.After(5 * time.Second):
					b.Fatal("key not removed")
				}
				c.Wait()
			}
			slices.Sort(took)
			b.ReportMetric(float64(took[len(took)/2].Microseconds())/1000, "p50-ms")
			b.ReportMetric(float64(took[len(took)-1].Microseconds())/1000, "max-ms")
		})
	}
}

// Keep-alive requests etcd receives, and the CPU of this process (etcd and
// the agent), with 500 live workers at the default TTL over 30 s: a lease
// per worker against one lease for the host (issue 13, acceptance 5).
//
//	go test -run '^$' -bench KeepAlives -benchtime 1x ./agent
func BenchmarkKeepAlives(b *testing.B) {
	const workers, window = 500, 30 * time.Second
	for _, mode := range []string{"per-worker", "per-host"} {
		b.Run(mode, func(b *testing.B) {
			h := newHarness(b, nil, func(c *Config) {
				quiet(c)
				c.TTL = registrar.DefaultTTL
				c.LeasePerWorker = mode == "per-worker"
			})
			for i := range workers {
				c := child(b)
				if code, w := h.do("POST", "/v1/workers", map[string]any{"job": "bench", "port": 10000 + i, "pid": c.Process.Pid}); code != http.StatusCreated || w["state"] != "registered" {
					b.Fatalf("register: %d %v", code, w)
				}
			}
			for b.Loop() {
				ka0, cpu0 := etcdtest.KeepAlivesReceived(b), cpuSeconds(b)
				time.Sleep(window) // the measurement window itself
				ka1, cpu1 := etcdtest.KeepAlivesReceived(b), cpuSeconds(b)
				b.ReportMetric((ka1-ka0)/window.Seconds(), "keepalives/s")
				b.ReportMetric((cpu1-cpu0)/window.Seconds(), "cpu-cores")
			}
		})
	}
}

// cpuSeconds is this process's user and system CPU time.
func cpuSeconds(b *testing.B) float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}
