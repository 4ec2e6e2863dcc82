//go:build linux

package unicorn

import (
	"fmt"
	"strconv"
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
	job        = "unicorn"
	numWorkers = 2
	recycles   = 10
)

// Real Unicorn (Debian's unicorn 6), 2 workers with preload_app, each
// registering through the Ruby client with the agent, discovered by
// sdwriter, scraped by Prometheus 3 with created-timestamp-zero-ingestion:
//
//   - the 2 workers are 2 targets, each on its own instance;
//   - through 10 recycles by QUIT to one worker (a graceful exit: the final
//     scrape runs at_exit), under a steady 40 requests a second, the
//     reset-aware total of the raw samples of the request counter (per
//     status code) and of the histogram's count equals what Unicorn
//     answered, exactly; the master's own count (preload_app) is in no
//     worker's;
//   - a worker killed with SIGKILL leaves the targets file within 1 s.
func TestUnicornExactTotals(t *testing.T) {
	unicorn := buildtest.RequireTool(t, "unicorn", "apt-get install unicorn")
	rubytest.RequireLib(t, "prometheus/client", "apt-get install ruby-prometheus-client-mmap")
	stack := servertest.Start(t, rubytest.StackOptions)
	bind := etcdtest.FreeAddr(t)
	began := time.Now()
	env := append(stack.Env(),
		"RUBYLIB="+rubytest.ClientLib(t),
		"UNICORN_LISTEN="+bind,
		"UNICORN_WORKERS="+strconv.Itoa(numWorkers),
		"WORKERSD_JOB="+job)
	srv := servertest.Run(t, stack.Dir, "unicorn", env, unicorn, "-c", "unicorn.rb")
	live := rubytest.Pids(stack.WaitTargets(t, numWorkers, 30*time.Second))
	d := rubytest.StartDriver(t, bind, 25*time.Millisecond)
	watch := stack.Watch(numWorkers)

	recycleStart := time.Now()
	for i := range recycles {
		victim := rubytest.Any(live)
		if err := syscall.Kill(victim, syscall.SIGQUIT); err != nil {
			t.Fatal(err)
		}
		live = rubytest.WaitReplaced(t, stack, numWorkers, []int{victim}, 30*time.Second)
		if i == 0 {
			t.Logf("QUIT to worker %d: replaced in %s", victim, time.Since(recycleStart).Round(time.Millisecond))
		}
	}
	ok, notFound, failed := d.Stop()
	lastRequest := time.Now()
	t.Logf("%d recycles (QUIT) in %s; %d requests answered (%d 200, %d 404), %d failed",
		recycles, time.Since(recycleStart).Round(time.Millisecond), ok+notFound, ok, notFound, len(failed))
	if len(failed) > 0 {
		t.Errorf("%d requests failed: %v", len(failed), failed)
	}

	stack.WaitScraped(t, job, lastRequest, 30*time.Second)
	victim := stack.Targets(t)[0]
	gone := stack.KillWorker(t, victim)
	t.Logf("kill -9 of worker %d: gone from the targets file after %s (polled every %s)", victim.Pid(), gone.Round(time.Millisecond), poll.Interval)
	stack.WaitTargets(t, numWorkers, 30*time.Second)
	stack.WaitScraped(t, job, time.Now(), 30*time.Second)
	end := time.Now()
	workers, instances := watch.Stop(t, stack, numWorkers)
	t.Logf("%d workers on %d instances", workers, instances)

	rubytest.CheckTotals(t, stack, began.Add(-5*time.Second), end, map[string]float64{
		fmt.Sprintf(`app_requests_total{job=%q,code="200"}`, job):                float64(ok),
		fmt.Sprintf(`app_requests_total{job=%q,code="404"}`, job):                float64(notFound),
		fmt.Sprintf(`app_request_duration_seconds_count{job=%q}`, job):           float64(ok + notFound),
		fmt.Sprintf(`app_request_duration_seconds_bucket{job=%q,le="1.0"}`, job): float64(ok + notFound),
	})
	rubytest.CheckLog(t, srv.Log())
}
