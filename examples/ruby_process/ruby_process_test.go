//go:build linux

package rubyprocess

import (
	"fmt"
	"regexp"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/workersd/workersd/examples/internal/rubytest"
	"github.com/workersd/workersd/internal/testing/buildtest"
	"github.com/workersd/workersd/internal/testing/poll"
	"github.com/workersd/workersd/internal/testing/servertest"
)

const (
	job          = "listener"
	numProcesses = 2
	restarts     = 10
)

// Plain Ruby processes that serve no HTTP (listener.rb), each registering
// with the agent through Workersd::Worker, discovered by sdwriter, scraped
// by Prometheus 3 with created-timestamp-zero-ingestion:
//
//   - 2 processes are 2 targets;
//   - through 10 restarts (a new process, then SIGTERM to an old one, which
//     waits for its final scrape), the reset-aware total of the raw samples
//     of listener_events_total equals the events the processes say they
//     handled, exactly;
//   - a process killed with SIGKILL leaves the targets file within 1 s.
func TestRubyProcessExactTotals(t *testing.T) {
	ruby := buildtest.RequireTool(t, "ruby", "apt-get install ruby")
	rubytest.RequireLib(t, "prometheus/client", "apt-get install ruby-prometheus-client-mmap")
	stack := servertest.Start(t, rubytest.StackOptions)
	began := time.Now()
	env := append(stack.Env(), "RUBYLIB="+rubytest.ClientLib(t), "WORKERSD_JOB="+job)
	n := 0
	start := func() *servertest.Proc {
		n++
		return servertest.Run(t, stack.Dir, fmt.Sprintf("listener-%d", n), env, ruby, "listener.rb")
	}
	var live, ended []*servertest.Proc
	for range numProcesses {
		live = append(live, start())
	}
	stack.WaitTargets(t, numProcesses, 30*time.Second)
	watch := stack.Watch(numProcesses + 1)

	restartStart := time.Now()
	for i := range restarts {
		old := live[i%numProcesses]
		live[i%numProcesses] = start()
		stack.WaitTargets(t, numProcesses+1, 30*time.Second)
		if !old.Stop(syscall.SIGTERM, 30*time.Second) {
			t.Fatalf("listener %d did not exit within 30s of SIGTERM", old.Cmd.Process.Pid)
		}
		ended = append(ended, old)
	}
	for _, p := range live {
		if !p.Stop(syscall.SIGTERM, 30*time.Second) {
			t.Fatalf("listener %d did not exit within 30s of SIGTERM", p.Cmd.Process.Pid)
		}
		ended = append(ended, p)
	}
	t.Logf("%d restarts in %s", restarts, time.Since(restartStart).Round(time.Millisecond))
	poll.Until(t, 10*time.Second, func() bool { return len(stack.Targets(t)) == 0 }, "listeners still in the targets file")
	end := time.Now()
	handled := 0
	for _, p := range ended {
		m := handledRe.FindStringSubmatch(p.Log())
		if m == nil {
			t.Fatalf("listener %d did not say what it handled:\n%s", p.Cmd.Process.Pid, p.Log())
		}
		k, _ := strconv.Atoi(m[1])
		handled += k
		rubytest.CheckLog(t, p.Log())
	}
	rubytest.CheckTotals(t, stack, began.Add(-5*time.Second), end, map[string]float64{
		fmt.Sprintf(`listener_events_total{job=%q}`, job): float64(handled),
	})

	start()
	victim := stack.WaitTargets(t, 1, 30*time.Second)[0]
	gone := stack.KillWorker(t, victim)
	t.Logf("kill -9 of listener %d: gone from the targets file after %s (polled every %s)", victim.Pid(), gone.Round(time.Millisecond), poll.Interval)
	workers, instances := watch.Stop(t, stack, numProcesses+1)
	t.Logf("%d processes on %d instances", workers, instances)
}

var handledRe = regexp.MustCompile(`handled (\d+) events`)
