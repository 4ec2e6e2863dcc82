//go:build linux

package celery

import (
	"fmt"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/workersd/workersd/internal/testing/buildtest"
	"github.com/workersd/workersd/internal/testing/etcdtest"
	"github.com/workersd/workersd/internal/testing/poll"
	"github.com/workersd/workersd/internal/testing/promtest"
	"github.com/workersd/workersd/internal/testing/servertest"
)

const (
	job        = "celery"
	numWorkers = 4
	// Each pool process ends after 8 tasks: 160 tasks recycle ~16.
	maxTasks  = 8
	tasks     = 160
	taskEvery = 150 * time.Millisecond
	// longTask is acceptance 2's task.
	longTask = 20 * time.Second
)

// Debian's Celery 5.2 (prefork pool, Redis broker, max-tasks-per-child
// recycling) with the workersd Python package, as examples/celery sets it
// up: the pool processes boot while the agent is away and are registered
// within 5 s of its return; 4 processes are 4 targets on distinct slots;
// Prometheus 3's job-wide task total is exact through every recycle; a
// 20 s task shows in celery_task_seconds_total at every scrape as one
// worker-second per second; a pool process killed with SIGKILL leaves the
// targets file within 1 s.
func TestCelery(t *testing.T) {
	py := buildtest.Python(t, "celery", "redis", "prometheus_client")
	redisServer := buildtest.RequireTool(t, "redis-server", "apt-get install redis-server")
	s := servertest.Start(t, servertest.Options{})
	redisAddr := etcdtest.FreeAddr(t)
	_, redisPort, _ := net.SplitHostPort(redisAddr)
	servertest.Run(t, s.Dir, "redis", nil, redisServer, "--port", redisPort, "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", s.Dir)
	poll.Until(t, 10*time.Second, func() bool {
		c, err := net.Dial("tcp", redisAddr)
		if err == nil {
			c.Close()
		}
		return err == nil
	}, "redis-server does not answer on %s", redisAddr)
	env := append(s.Env(), "WORKERSD_JOB="+job, "CELERY_BROKER=redis://"+redisAddr+"/0", "PYTHONDONTWRITEBYTECODE=1")

	// The pool processes boot while the agent is away.
	s.StopAgent(t)
	from := time.Now().Add(-time.Second)
	worker := servertest.Run(t, s.Dir, "celery", env, py, "-m", "celery", "-A", "tasks", "worker",
		"--pool=prefork", "--concurrency="+strconv.Itoa(numWorkers), "--max-tasks-per-child="+strconv.Itoa(maxTasks),
		"--loglevel=info", "--without-gossip", "--without-mingle", "--without-heartbeat")
	took := s.AgentReturns(t, worker, "workersd: agent unreachable", numWorkers)
	t.Logf("%d pool processes registered %s after the agent's return", numWorkers, took.Round(time.Millisecond))

	w := s.Watch(numWorkers)
	send(t, py, env, tasks, taskEvery, 0)
	s.WaitScraped(t, job, time.Now(), 40*time.Second)

	// Acceptance 2: one long task, accounted as it runs.
	longSel := fmt.Sprintf(`celery_task_seconds_total{job=%q,task="tasks.work"}`, job)
	longFrom := time.Now()
	send(t, py, env, 1, 0, longTask.Seconds())
	longEnd := time.Now()
	checkLongTask(t, s, longSel, longFrom, longEnd)

	s.WaitScraped(t, job, time.Now(), 40*time.Second)
	victim := s.Targets(t)[0]
	took = s.KillWorker(t, victim)
	t.Logf("kill -9 of pool process %d: gone from the targets file after %s", victim.Pid(), took)
	s.WaitTargets(t, numWorkers, 20*time.Second)
	pids, instances := w.Stop(t, s, numWorkers)
	end := time.Now()

	recycles := pids - numWorkers
	t.Logf("%d tasks, %d pool processes recycled (max-tasks-per-child and one kill -9), %d instances", tasks+1, recycles, instances)
	if recycles < 10 {
		t.Errorf("%d recycles, want at least 10", recycles)
	}
	sel := fmt.Sprintf(`celery_tasks_total{job=%q,task="tasks.work",outcome="success"}`, job)
	s.CheckTotal(t, sel, from, end, tasks+1)
	if graceful := strings.Count(s.Agent.Log(), "worker deregistered"); graceful < recycles-1 {
		t.Errorf("%d pool processes deregistered through the API, want the %d recycled by max-tasks-per-child", graceful, recycles-1)
	}
	if !worker.Stop(syscall.SIGTERM, 40*time.Second) {
		t.Error("celery did not stop within 40 s of SIGTERM")
	}
}

// send runs send.py: count tasks of seconds each, one every every, and
// waits for every result.
func send(t *testing.T, py string, env []string, count int, every time.Duration, seconds float64) {
	t.Helper()
	cmd := exec.Command(py, "send.py", strconv.Itoa(count), strconv.FormatFloat(every.Seconds(), 'f', -1, 64), strconv.FormatFloat(seconds, 'f', -1, 64))
	cmd.Env = append(cmd.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), fmt.Sprintf("succeeded %d\n", count)) {
		t.Fatalf("send.py %d tasks: %v\n%s", count, err, out)
	}
}

// checkLongTask: while the task ran, every scrape saw the seconds counter
// grow, and over every 5 s window it grew by 5 s within 10 %.
func checkLongTask(t *testing.T, s *servertest.Stack, sel string, from, end time.Time) {
	t.Helper()
	ss, err := promtest.RawSamples(s.PromURL, sel, from, end)
	if err != nil {
		t.Fatal(err)
	}
	var run []promtest.Sample
	for _, x := range ss {
		// The process that ran it: its counter grew by the task's length.
		if len(x.Samples) > 1 && x.Samples[len(x.Samples)-1].V-x.Samples[0].V > longTask.Seconds()/2 {
			run = x.Samples
		}
	}
	if run == nil {
		t.Fatalf("no series of %s grew by the long task: %v", sel, ss)
	}
	// The task's own span: from the first growth to the last.
	first, last := -1, -1
	for i := 1; i < len(run); i++ {
		if run[i].V > run[i-1].V {
			if first < 0 {
				first = i - 1
			}
			last = i
		}
	}
	var flat, windows, bad int
	worst := 0.0
	for i := first + 1; i <= last; i++ {
		if run[i].V <= run[i-1].V {
			flat++
		}
		// Every 5 s window that starts at a scrape in the task and ends
		// before it did.
		for j := i; j <= last; j++ {
			if run[j].T-run[i-1].T >= 5 {
				rate := (run[j].V - run[i-1].V) / (run[j].T - run[i-1].T)
				windows++
				if d := rate - 1; d > worst || -d > worst {
					worst = max(d, -d)
				}
				if rate < 0.9 || rate > 1.1 {
					bad++
				}
				break
			}
		}
	}
	t.Logf("long task: %d scrapes while it ran, %d without growth; %d windows of 5 s, worst rate off by %.1f %%", last-first, flat, windows, 100*worst)
	if flat > 0 {
		t.Errorf("%d scrapes during the long task saw no growth of %s", flat, sel)
	}
	if windows < 10 || bad > 0 {
		t.Errorf("%d of %d 5 s windows during the task off by more than 10 %% from 1 s/s", bad, windows)
	}
}
