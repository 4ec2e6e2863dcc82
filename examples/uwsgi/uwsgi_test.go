//go:build linux

package uwsgi

import (
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/workersd/workersd/internal/testing/buildtest"
	"github.com/workersd/workersd/internal/testing/etcdtest"
	"github.com/workersd/workersd/internal/testing/servertest"
)

const (
	job        = "uwsgi"
	numWorkers = 4
	// maxRequests makes the 4 workers recycle about 12 times over the run.
	maxRequests = 30
	requests    = 480
	// ~2 requests a second per worker: a lifetime of ~15 s, most of it
	// scraped every 200 ms.
	requestEvery = 125 * time.Millisecond
)

// Debian's uWSGI (python3 plugin, lazy-apps, max-requests recycling) with
// the workersd Python package, as examples/uwsgi configures it: the workers
// boot while the agent is away and are registered within 5 s of its
// return; then 4 workers are 4 targets on distinct slots, Prometheus 3's
// job-wide request total is exact through every recycle, and a worker
// killed with SIGKILL leaves the targets file within 1 s.
//
// Both ways of loading the app: lazy-apps (each worker imports it) and the
// default (the master imports it, setup() registers each worker after its
// fork through uwsgi.post_fork_hook).
func TestUWSGI(t *testing.T) {
	uwsgi := buildtest.RequireTool(t, "uwsgi", "apt-get install uwsgi uwsgi-plugin-python3")
	// The plugin embeds Debian's Python, which needs prometheus_client.
	buildtest.Python(t, "prometheus_client")
	for _, lazy := range []bool{true, false} {
		t.Run(fmt.Sprintf("lazy-apps=%t", lazy), func(t *testing.T) {
			t.Parallel()
			run(t, uwsgi, lazy)
		})
	}
}

func run(t *testing.T, uwsgi string, lazy bool) {
	s := servertest.Start(t, servertest.Options{})
	bind := etcdtest.FreeAddr(t)
	env := append(s.Env(),
		"WORKERSD_JOB="+job,
		"UWSGI_BIND="+bind,
		fmt.Sprintf("UWSGI_WORKERS=%d", numWorkers),
		fmt.Sprintf("UWSGI_MAX_REQUESTS=%d", maxRequests),
		fmt.Sprintf("UWSGI_LAZY_APPS=%t", lazy),
	)

	// The workers boot while the agent is away (stopped, as for an
	// upgrade): each keeps trying, and is registered once it is back.
	s.StopAgent(t)
	from := time.Now().Add(-time.Second)
	server := servertest.Run(t, s.Dir, "uwsgi", env, uwsgi, "--ini", "uwsgi.ini")
	took := s.AgentReturns(t, server, "workersd: agent unreachable", numWorkers)
	t.Logf("%d workers registered %s after the agent's return", numWorkers, took.Round(time.Millisecond))

	w := s.Watch(numWorkers)
	ok, notFound := servertest.DriveRequests(t, bind, requests, requestEvery)
	s.WaitScraped(t, job, time.Now(), 40*time.Second)

	victim := s.Targets(t)[0]
	took = s.KillWorker(t, victim)
	t.Logf("kill -9 of worker %d: gone from the targets file after %s", victim.Pid(), took)
	for _, tg := range s.WaitTargets(t, numWorkers, 20*time.Second) {
		if tg.Labels["instance"] == victim.Labels["instance"] {
			t.Errorf("the replacement took the killed worker's instance %s while it was held", victim.Labels["instance"])
		}
	}
	pids, instances := w.Stop(t, s, numWorkers)
	end := time.Now()

	recycles := pids - numWorkers
	t.Logf("%d requests (%d 404), %d workers recycled (max-requests and one kill -9), %d instances", ok+notFound, notFound, recycles, instances)
	if recycles < 10 {
		t.Errorf("%d worker recycles, want at least 10", recycles)
	}
	for sel, truth := range map[string]int{
		fmt.Sprintf(`app_requests_total{job=%q}`, job):             ok + notFound,
		fmt.Sprintf(`app_responses_total{job=%q,code="404"}`, job): notFound,
	} {
		s.CheckTotal(t, sel, from, end, float64(truth))
	}
	// The recycled workers ran uwsgi.atexit: final scrape, then DELETE
	// (the agent logs "worker exited" for the one killed).
	if graceful := strings.Count(s.Agent.Log(), "worker deregistered"); graceful < recycles-1 {
		t.Errorf("%d workers deregistered through the API, want the %d recycled by max-requests", graceful, recycles-1)
	}
	if !server.Stop(syscall.SIGTERM, 40*time.Second) {
		t.Error("uWSGI did not stop within 40 s of SIGTERM")
	}
}
