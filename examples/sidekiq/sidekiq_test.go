//go:build linux

package sidekiq

import (
	"fmt"
	"math"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/workersd/workersd/examples/internal/rubytest"
	"github.com/workersd/workersd/internal/testing/buildtest"
	"github.com/workersd/workersd/internal/testing/etcdtest"
	"github.com/workersd/workersd/internal/testing/poll"
	"github.com/workersd/workersd/internal/testing/promtest"
	"github.com/workersd/workersd/internal/testing/servertest"
)

const (
	job          = "sidekiq"
	numProcesses = 2 // on the default queue; one more runs the long job
	restarts     = 10
	longJob      = 20 * time.Second
)

// Real Sidekiq (Debian's 6.4) with redis-server, a process per worker, each
// registering through the Ruby client's Workersd::Sidekiq with the agent,
// discovered by sdwriter, scraped by Prometheus 3 with
// created-timestamp-zero-ingestion:
//
//   - 3 Sidekiq processes are 3 targets;
//   - 10 rolling restarts of the 2 processes on the default queue (a new
//     process starts, then the old one gets SIGTERM with jobs in flight: it
//     finishes them, then waits for its final scrape) while a producer
//     enqueues 50 short jobs a second: the reset-aware total of the raw
//     samples of sidekiq_jobs_total{outcome="success"} equals the jobs run,
//     exactly;
//   - a 20 s job in the third process is accounted at every scrape by the
//     Ruby Tracer: each 5 s window of its run within 5 % of one
//     worker-second per second;
//   - a process killed with SIGKILL leaves the targets file within 1 s.
func TestSidekiqExactTotals(t *testing.T) {
	sidekiq := buildtest.RequireTool(t, "sidekiq", "apt-get install ruby-sidekiq")
	redis := buildtest.RequireTool(t, "redis-server", "apt-get install redis-server")
	redisCLI := buildtest.RequireTool(t, "redis-cli", "apt-get install redis-server")
	ruby := buildtest.RequireTool(t, "ruby", "apt-get install ruby")
	rubytest.RequireLib(t, "prometheus/client", "apt-get install ruby-prometheus-client-mmap")
	stack := servertest.Start(t, rubytest.StackOptions)
	redisPort := strconv.Itoa(freePort(t))
	servertest.Run(t, stack.Dir, "redis", nil, redis, "--port", redisPort, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no")
	poll.Until(t, 10*time.Second, func() bool {
		return exec.Command(redisCLI, "-p", redisPort, "ping").Run() == nil
	}, "redis-server did not answer")
	began := time.Now()
	env := append(stack.Env(),
		"RUBYLIB="+rubytest.ClientLib(t),
		"REDIS_URL=redis://127.0.0.1:"+redisPort,
		"WORKERSD_JOB="+job)
	n := 0
	start := func(args ...string) *servertest.Proc {
		n++
		return servertest.Run(t, stack.Dir, fmt.Sprintf("sidekiq-%d", n), env, sidekiq,
			append([]string{"-r", "./app.rb", "-t", "10"}, args...)...)
	}
	var procs []*servertest.Proc
	for range numProcesses {
		procs = append(procs, start("-c", "2", "-q", "default"))
	}
	long := start("-c", "1", "-q", "long")
	booted := time.Now()
	stack.WaitTargets(t, numProcesses+1, 60*time.Second)
	t.Logf("%d Sidekiq processes in the targets file %s after their start", numProcesses+1, time.Since(booted).Round(time.Millisecond))
	watch := stack.Watch(numProcesses + 2)

	producer := servertest.Run(t, stack.Dir, "enqueue", env, ruby, "enqueue.rb")
	longStart := time.Now()
	enqueueLong := exec.Command(ruby, "enqueue.rb", strconv.Itoa(int(longJob.Seconds())))
	enqueueLong.Env = append(os.Environ(), env...)
	if out, err := enqueueLong.CombinedOutput(); err != nil {
		t.Fatalf("enqueue the long job: %v: %s", err, out)
	}

	// Rolling restarts: the replacement first, then SIGTERM to the old
	// process, which finishes its jobs in flight and waits for its final
	// scrape before it exits.
	stopped := make(chan error, restarts)
	restartStart := time.Now()
	for i := range restarts {
		old := procs[i%numProcesses]
		procs[i%numProcesses] = start("-c", "2", "-q", "default")
		stack.WaitTargets(t, numProcesses+2, 60*time.Second)
		go func() {
			if !old.Stop(syscall.SIGTERM, 30*time.Second) {
				stopped <- fmt.Errorf("sidekiq %d did not exit within 30s of SIGTERM", old.Cmd.Process.Pid)
				return
			}
			stopped <- nil
		}()
		stack.WaitTargets(t, numProcesses+1, 30*time.Second)
	}
	for range restarts {
		if err := <-stopped; err != nil {
			t.Error(err)
		}
	}
	t.Logf("%d rolling restarts in %s", restarts, time.Since(restartStart).Round(time.Millisecond))

	if !producer.Stop(syscall.SIGTERM, 10*time.Second) {
		t.Fatal("the producer did not stop")
	}
	enqueued := parseInt(t, regexp.MustCompile(`enqueued (\d+)`), producer.Log())
	var done int
	var doneSeen string
	poll.Until(t, 60*time.Second, func() bool {
		out, err := exec.Command(redisCLI, "-p", redisPort, "get", "done").Output()
		doneSeen = strings.TrimSpace(string(out))
		done, _ = strconv.Atoi(doneSeen)
		return err == nil && done >= enqueued
	}, "%s of %d jobs done", poll.Latest(&doneSeen), enqueued)
	if done != enqueued {
		t.Fatalf("%d jobs done, %d enqueued", done, enqueued)
	}
	// The long job is over too, and every count is scraped.
	poll.Until(t, 60*time.Second, func() bool { return strings.Contains(long.Log(), "LongJob") && strings.Contains(long.Log(), "done") },
		"the long job did not end")
	stack.WaitScraped(t, job, time.Now(), 30*time.Second)
	victim := stack.Targets(t)[0]
	gone := stack.KillWorker(t, victim)
	t.Logf("kill -9 of process %d: gone from the targets file after %s (polled every %s)", victim.Pid(), gone.Round(time.Millisecond), poll.Interval)
	end := time.Now()
	workers, instances := watch.Stop(t, stack, numProcesses+2)
	t.Logf("%d processes on %d instances; %d jobs enqueued and done", workers, instances, done)

	rubytest.CheckTotals(t, stack, began.Add(-5*time.Second), end, map[string]float64{
		fmt.Sprintf(`sidekiq_jobs_total{job=%q,class="CountJob",outcome="success"}`, job): float64(done),
		fmt.Sprintf(`sidekiq_jobs_total{job=%q,class="LongJob",outcome="success"}`, job):  1,
	})
	checkLongJob(t, stack, longStart, end)
	for _, p := range append(procs, long) {
		rubytest.CheckLog(t, p.Log())
	}
}

// checkLongJob checks that the long job's seconds grew at one per second
// through its run, in every 5 s window, within 5 %.
func checkLongJob(t *testing.T, stack *servertest.Stack, start, end time.Time) {
	t.Helper()
	ss, err := promtest.RawSamples(stack.PromURL, fmt.Sprintf(`sidekiq_job_seconds_total{job=%q,class="LongJob"}`, job), start, end)
	if err != nil {
		t.Fatal(err)
	}
	if len(ss) != 1 {
		t.Fatalf("%d series of the long job's seconds, want 1: %v", len(ss), ss)
	}
	s := ss[0].Samples
	final := s[len(s)-1].V
	if math.Abs(final-longJob.Seconds()) > 0.5 {
		t.Errorf("the long job's seconds: %.3f, want %.0f", final, longJob.Seconds())
	}
	// Its run: from the last sample at 0 to the first at its final value.
	first, last := 0, len(s)-1
	for i, x := range s {
		if x.V == 0 {
			first = i
		}
	}
	for last > 0 && s[last-1].V == final {
		last--
	}
	windows, worst := 0, 0.0
	for a := first; ; {
		b := a
		for b < last && s[b].T-s[a].T < 5 {
			b++
		}
		if s[b].T-s[a].T < 5 {
			break
		}
		rate := (s[b].V - s[a].V) / (s[b].T - s[a].T)
		worst = math.Max(worst, math.Abs(rate-1))
		if math.Abs(rate-1) > 0.05 {
			t.Errorf("the long job's seconds grew %.3f per second over [%.1f, %.1f] s of its run, want 1 within 5%%",
				rate, s[a].T-s[first].T, s[b].T-s[first].T)
		}
		windows++
		a = b
	}
	t.Logf("the 20 s job: %d windows of 5 s, worst %.2f %% off one worker-second per second", windows, 100*worst)
	if windows < 3 {
		t.Errorf("only %d windows of 5 s in the long job's run", windows)
	}
}

func parseInt(t *testing.T, re *regexp.Regexp, log string) int {
	t.Helper()
	m := re.FindStringSubmatch(log)
	if m == nil {
		t.Fatalf("no %s in:\n%s", re, log)
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

func freePort(t *testing.T) int {
	t.Helper()
	addr := etcdtest.FreeAddr(t)
	_, port, _ := strings.Cut(addr, ":")
	p, err := strconv.Atoi(port)
	if err != nil {
		t.Fatal(err)
	}
	return p
}
