//go:build linux

package delayedjob

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/workersd/workersd/examples/internal/rubytest"
	"github.com/workersd/workersd/internal/testing/buildtest"
	"github.com/workersd/workersd/internal/testing/poll"
	"github.com/workersd/workersd/internal/testing/servertest"
)

const (
	job        = "delayed-job"
	numWorkers = 2
	restarts   = 10
)

// A pool of real DelayedJob workers (Debian's delayed_job 4.1 on
// ActiveRecord with SQLite), forked by pool.rb, each registering through
// the Ruby client's Workersd::DelayedJob plugin with the agent, discovered
// by sdwriter, scraped by Prometheus 3 with created-timestamp-zero-ingestion:
//
//   - the 2 workers are 2 targets;
//   - through 10 restarts (SIGTERM to one worker: it ends its job, waits for
//     its final scrape and exits; the pool forks a replacement) while
//     enqueue.rb enqueues 50 jobs a second, the reset-aware total of the raw
//     samples of delayed_job_jobs_total{outcome="success"} equals the jobs
//     enqueued (all run: the table is empty), exactly;
//   - a worker killed with SIGKILL leaves the targets file within 1 s.
func TestDelayedJobPoolExactTotals(t *testing.T) {
	ruby := buildtest.RequireTool(t, "ruby", "apt-get install ruby")
	rubytest.RequireLib(t, "prometheus/client", "apt-get install ruby-prometheus-client-mmap")
	rubytest.RequireLib(t, "delayed_job_active_record", "apt-get install ruby-delayed-job-active-record")
	rubytest.RequireLib(t, "sqlite3", "apt-get install ruby-sqlite3")
	stack := servertest.Start(t, rubytest.StackOptions)
	began := time.Now()
	env := append(stack.Env(),
		"RUBYLIB="+rubytest.ClientLib(t),
		"DJ_DATABASE="+filepath.Join(stack.Dir, "jobs.sqlite3"),
		"DJ_WORKERS="+strconv.Itoa(numWorkers),
		"WORKERSD_JOB="+job)
	pool := servertest.Run(t, stack.Dir, "pool", env, ruby, "pool.rb")
	live := rubytest.Pids(stack.WaitTargets(t, numWorkers, 60*time.Second))
	watch := stack.Watch(numWorkers)
	producer := servertest.Run(t, stack.Dir, "enqueue", env, ruby, "enqueue.rb")

	restartStart := time.Now()
	for range restarts {
		victim := rubytest.Any(live)
		if err := syscall.Kill(victim, syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		live = rubytest.WaitReplaced(t, stack, numWorkers, []int{victim}, 30*time.Second)
	}
	t.Logf("%d restarts in %s", restarts, time.Since(restartStart).Round(time.Millisecond))
	if !producer.Stop(syscall.SIGTERM, 10*time.Second) {
		t.Fatal("the producer did not stop")
	}
	m := regexp.MustCompile(`enqueued (\d+)`).FindStringSubmatch(producer.Log())
	if m == nil {
		t.Fatalf("the producer did not say how many it enqueued:\n%s", producer.Log())
	}
	enqueued, _ := strconv.Atoi(m[1])
	var left string
	poll.Until(t, 60*time.Second, func() bool {
		cmd := exec.Command(ruby, "enqueue.rb", "left")
		cmd.Env = append(os.Environ(), env...)
		out, err := cmd.CombinedOutput()
		left = strings.TrimSpace(string(out))
		return err == nil && left == "0"
	}, "jobs left in the table: %s", poll.Latest(&left))
	stack.WaitScraped(t, job, time.Now(), 30*time.Second)
	victim := stack.Targets(t)[0]
	gone := stack.KillWorker(t, victim)
	t.Logf("kill -9 of worker %d: gone from the targets file after %s (polled every %s)", victim.Pid(), gone.Round(time.Millisecond), poll.Interval)
	stack.WaitTargets(t, numWorkers, 30*time.Second)
	end := time.Now()
	workers, instances := watch.Stop(t, stack, numWorkers)
	t.Logf("%d workers on %d instances; %d jobs enqueued, all run", workers, instances, enqueued)

	rubytest.CheckTotals(t, stack, began.Add(-5*time.Second), end, map[string]float64{
		fmt.Sprintf(`delayed_job_jobs_total{job=%q,class="CountJob",outcome="success"}`, job): float64(enqueued),
	})
	rubytest.CheckLog(t, pool.Log())
}
