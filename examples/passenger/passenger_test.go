//go:build linux

package passenger

import (
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/workersd/workersd/examples/internal/rubytest"
	"github.com/workersd/workersd/internal/testing/buildtest"
	"github.com/workersd/workersd/internal/testing/etcdtest"
	"github.com/workersd/workersd/internal/testing/poll"
	"github.com/workersd/workersd/internal/testing/servertest"
)

const (
	job          = "passenger"
	numProcesses = 2
	minRecycles  = 10
	// Each process is recycled after this many requests: at 40 requests a
	// second over 2 processes, every 4 s or so.
	maxRequests = 80
)

// Real Phusion Passenger (Debian's 6.0, passenger start --engine=builtin,
// smart spawning), 2 application processes recycled by max_requests, each
// registering through the Ruby client's Workersd::Passenger with the agent,
// discovered by sdwriter, scraped by Prometheus 3 with
// created-timestamp-zero-ingestion:
//
//   - the 2 processes are 2 targets (a recycled one stays a target, beside
//     its replacement, until its final scrape);
//   - through at least 10 recycles under a steady 40 requests a second, the
//     reset-aware total of the raw samples of the request counter (per
//     status code) and of the histogram's count equals what Passenger
//     answered, exactly;
//   - a process killed with SIGKILL leaves the targets file within 1 s.
func TestPassengerExactTotals(t *testing.T) {
	passenger := buildtest.RequireTool(t, "passenger", "apt-get install passenger")
	rubytest.RequireLib(t, "prometheus/client", "apt-get install ruby-prometheus-client-mmap")
	stack := servertest.Start(t, rubytest.StackOptions)
	addr := etcdtest.FreeAddr(t)
	host, port, _ := strings.Cut(addr, ":")
	began := time.Now()
	env := append(stack.Env(), "RUBYLIB="+rubytest.ClientLib(t), "WORKERSD_JOB="+job)
	srv := servertest.Run(t, stack.Dir, "passenger", env, passenger, "start", "--engine=builtin",
		"--address", host, "--port", port, "--environment", "production",
		"--spawn-method", "smart", "--min-instances", strconv.Itoa(numProcesses), "--max-pool-size", strconv.Itoa(numProcesses),
		"--max-requests", strconv.Itoa(maxRequests), "--disable-security-update-check", "--disable-anonymous-telemetry",
		"--pid-file", filepath.Join(stack.Dir, "passenger.pid"), "--log-file", filepath.Join(stack.Dir, "passenger-core.log"))
	// passenger start stops its core, watchdog and helpers on SIGTERM; the
	// harness' SIGKILL of the group comes after.
	t.Cleanup(func() {
		if !srv.Stop(syscall.SIGTERM, 30*time.Second) {
			t.Error("passenger did not stop within 30s of SIGTERM")
		}
	})
	first := stack.WaitTargets(t, numProcesses, 60*time.Second)
	// passenger start checks that its server answers with a request of its
	// own: what the processes counted before the test's requests is
	// Passenger's, added to the truth.
	stack.WaitScraped(t, job, time.Now(), 30*time.Second)
	pre := map[string]float64{}
	for _, sel := range []string{`app_requests_total{job=%q,code="200"}`, `app_requests_total{job=%q,code="404"}`, `app_request_duration_seconds_count{job=%q}`} {
		sel = fmt.Sprintf(sel, job)
		pre[sel] = stack.Total(t, sel, began.Add(-5*time.Second), time.Now())
	}
	t.Logf("before the test's requests: %v", pre)
	d := rubytest.StartDriver(t, addr, 25*time.Millisecond)
	// A recycled process is a target until its final scrape, beside its
	// replacement, and Passenger recycles on its own schedule: on a loaded
	// machine (CI) a second recycle of a slot came before the first
	// recycled process had its final scrape (5 targets for 2 processes).
	watch := stack.Watch(3 * numProcesses)

	// Passenger recycles each process after maxRequests requests.
	seen := rubytest.Pids(first)
	recycleStart := time.Now()
	poll.Until(t, 90*time.Second, func() bool {
		for pid := range rubytest.Pids(stack.Targets(t)) {
			seen[pid] = true
		}
		return len(seen) >= numProcesses+minRecycles
	}, "fewer than %d recycles", minRecycles)
	ok, notFound, failed := d.Stop()
	lastRequest := time.Now()
	t.Logf("%d processes registered, %d recycles, in %s; %d requests answered (%d 200, %d 404), %d failed",
		len(seen), len(seen)-numProcesses, time.Since(recycleStart).Round(time.Millisecond), ok+notFound, ok, notFound, len(failed))
	if len(failed) > 0 {
		t.Errorf("%d requests failed: %v", len(failed), failed)
	}

	stack.WaitTargets(t, numProcesses, 30*time.Second)
	stack.WaitScraped(t, job, lastRequest, 30*time.Second)
	victim := stack.Targets(t)[0]
	gone := stack.KillWorker(t, victim)
	t.Logf("kill -9 of process %d: gone from the targets file after %s (polled every %s)", victim.Pid(), gone.Round(time.Millisecond), poll.Interval)
	end := time.Now()
	workers, instances := watch.Stop(t, stack, 2*numProcesses)
	t.Logf("%d processes on %d instances", workers, instances)

	ok200 := fmt.Sprintf(`app_requests_total{job=%q,code="200"}`, job)
	nf404 := fmt.Sprintf(`app_requests_total{job=%q,code="404"}`, job)
	count := fmt.Sprintf(`app_request_duration_seconds_count{job=%q}`, job)
	rubytest.CheckTotals(t, stack, began.Add(-5*time.Second), end, map[string]float64{
		ok200: pre[ok200] + float64(ok),
		nf404: pre[nf404] + float64(notFound),
		count: pre[count] + float64(ok+notFound),
	})
	rubytest.CheckLog(t, srv.Log())
}
