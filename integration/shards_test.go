//go:build linux

package integration

import (
	"fmt"
	"maps"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/workersd/workersd/internal/testing/buildtest"
	"github.com/workersd/workersd/internal/testing/etcdtest"
	"github.com/workersd/workersd/internal/testing/poll"
	"github.com/workersd/workersd/sdfile"
)

// Issue 13, acceptance 4: sdwriter --output.shards=4 beside the
// environment's unsharded sdwriter, and a Prometheus with one scrape pool
// per shard each way: "hashmod-k" reads the whole output with
// examples/prometheus.yml's hashmod rules (modulus 4, regex k), "file-k"
// reads shard file k alone. Each pair holds the same targets, before and
// after workers restart (on other slots, and on their own slot), and each
// instance stays in its shard.
func TestShardsAreHashmodShards(t *testing.T) {
	const n = 4
	e := newEnv(t)
	dir := filepath.Join(e.dir, "shards")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	startProc(t, e.logs, "sdwriter-sharded", filepath.Join(binDir, "sdwriter"),
		"--etcd.endpoints="+strings.Join(e.cluster.endpoints(), ","),
		"--etcd.username=sdwriter", "--etcd.password-file="+e.sdwriterPasswordFile(),
		"--output.file="+filepath.Join(dir, "workersd.json"), fmt.Sprintf("--output.shards=%d", n),
		"--web.listen-address="+etcdtest.FreeAddr(t))

	var cfg strings.Builder
	fmt.Fprintf(&cfg, "global: {scrape_interval: 1s}\nscrape_configs:\n")
	for k := range n {
		fmt.Fprintf(&cfg, `  - job_name: hashmod-%d
    file_sd_configs: [{files: [%q], refresh_interval: 1s}]
    relabel_configs:
      - source_labels: [instance]
        modulus: %d
        target_label: __tmp_shard
        action: hashmod
      - source_labels: [__tmp_shard]
        regex: "%d"
        action: keep
  - job_name: file-%d
    file_sd_configs: [{files: [%q], refresh_interval: 1s}]
`, k, e.targets, n, k, k, sdfile.ShardFile(filepath.Join(dir, "workersd.json"), k, n))
	}
	cfgFile := filepath.Join(e.dir, "prometheus-shards.yml")
	if err := os.WriteFile(cfgFile, []byte(cfg.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	addr := etcdtest.FreeAddr(t)
	prom := &env{t: t, promURL: "http://" + addr}
	startProc(t, e.logs, "prometheus-shards", buildtest.RequirePrometheus3(t), "--config.file="+cfgFile,
		"--storage.tsdb.path="+filepath.Join(e.dir, "prometheus-shards-data"), "--web.listen-address="+addr)

	// 6 hosts of 4 workers; the workers of host h0 restart on their own
	// slot (no hold), the others after a hold, on other slots.
	var ws []*worker
	for i := range 24 {
		o := workerOpts{job: "shard", host: fmt.Sprintf("h%d", i/4), idle: true, finalScrape: time.Millisecond}
		if i < 4 {
			o.slotHold = -time.Second
		}
		ws = append(ws, e.startWorker(o))
	}
	// shardOf records every instance's shard over the whole test.
	shardOf := map[string]int{}
	check := func(live []*worker) {
		t.Helper()
		want := map[string]bool{}
		for _, w := range live {
			want[w.addr] = true
		}
		var last string
		poll.Until(t, 60*time.Second, func() bool {
			pools, err := prom.targetsByPool()
			if err != nil {
				last = err.Error()
				return false
			}
			seen := map[string]bool{}
			for k := range n {
				hm, file := pools[fmt.Sprintf("hashmod-%d", k)], pools[fmt.Sprintf("file-%d", k)]
				if !maps.Equal(hm, file) {
					last = fmt.Sprintf("shard %d: hashmod keeps %v, the shard file holds %v", k, slices.Sorted(maps.Keys(hm)), slices.Sorted(maps.Keys(file)))
					return false
				}
				for a := range hm {
					seen[a] = true
				}
			}
			if !maps.Equal(seen, want) {
				last = fmt.Sprintf("Prometheus has %v, want %v", slices.Sorted(maps.Keys(seen)), slices.Sorted(maps.Keys(want)))
				return false
			}
			for k := range n {
				for a, inst := range pools[fmt.Sprintf("file-%d", k)] {
					if was, ok := shardOf[inst]; ok && was != k {
						t.Fatalf("instance %s (%s) moved from shard %d to %d", inst, a, was, k)
					}
					shardOf[inst] = k
				}
			}
			return true
		}, "shards as hashmod splits them: %s", poll.Latest(&last))
	}
	check(ws)
	before := map[string]string{} // address -> instance of h0's workers
	pools, err := prom.targetsByPool()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pools {
		maps.Copy(before, p)
	}

	// Restart one worker of each host: stop it, start its replacement.
	live := slices.Clone(ws)
	for h := range 6 {
		i := h * 4
		if err := live[i].terminate(30 * time.Second); err != nil {
			t.Fatal(err)
		}
		o := live[i].opts
		live[i] = e.startWorker(o)
	}
	check(live)
	pools, err = prom.targetsByPool()
	if err != nil {
		t.Fatal(err)
	}
	after := map[string]string{}
	for _, p := range pools {
		maps.Copy(after, p)
	}
	if got, was := after[live[0].addr], before[ws[0].addr]; got != was {
		t.Errorf("h0's worker restarted without a hold is %s, was %s: want its own slot", got, was)
	}
	t.Logf("%d instances seen over the test, each in one shard: %v", len(shardOf), shardOf)
}

// targetsByPool lists Prometheus' active targets (those relabelling kept)
// as scrape pool -> address -> instance.
func (e *env) targetsByPool() (map[string]map[string]string, error) {
	var data struct {
		Active []struct {
			ScrapePool string            `json:"scrapePool"`
			ScrapeURL  string            `json:"scrapeUrl"`
			Labels     map[string]string `json:"labels"`
		} `json:"activeTargets"`
	}
	if err := e.api("/api/v1/targets", url.Values{"state": {"active"}}, &data); err != nil {
		return nil, err
	}
	out := map[string]map[string]string{}
	for _, t := range data.Active {
		if out[t.ScrapePool] == nil {
			out[t.ScrapePool] = map[string]string{}
		}
		u, err := url.Parse(t.ScrapeURL)
		if err != nil {
			return nil, err
		}
		out[t.ScrapePool][u.Host] = t.Labels["instance"]
	}
	return out, nil
}
