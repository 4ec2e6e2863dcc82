//go:build linux

package promcheck

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/workersd/workersd/internal/testing/buildtest"
	"github.com/workersd/workersd/internal/testing/poll"
	"github.com/workersd/workersd/internal/testing/servertest"
	"github.com/workersd/workersd/sdfile"
)

// promServer is a Prometheus server for a test, started at its first
// start and on the same address after a stop.
type promServer struct {
	*servertest.Prometheus
	t     *testing.T
	name  string // "3.15" or "2.42"
	bin   string
	flags []string
}

func prometheus3(t *testing.T) *promServer {
	return &promServer{t: t, name: "3.15", bin: buildtest.RequirePrometheus3(t), flags: []string{"--enable-feature=created-timestamp-zero-ingestion"}}
}

func prometheus2(t *testing.T) *promServer {
	return &promServer{t: t, name: "2.42", bin: buildtest.RequireTool(t, "prometheus", "apt-get install prometheus")}
}

// start runs the server with cfg and waits until it is ready.
func (p *promServer) start(cfg string) {
	p.t.Helper()
	if p.Prometheus != nil {
		p.Resume(cfg)
		return
	}
	p.Prometheus = servertest.StartPrometheus(p.t, "prometheus-"+p.name, p.bin, cfg, p.flags...)
	p.Ready()
}

// job is a scrape job for renderConfig.
type job struct {
	name      string
	interval  string   // default 1s
	files     []string // file_sd patterns
	httpSD    string   // http_sd URL
	relabel   string   // relabel_configs, YAML, indented as a list under the key
	protocols string   // scrape_protocols, a YAML flow list
	honor     bool
}

func renderConfig(jobs ...job) string {
	var b strings.Builder
	b.WriteString("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n")
	for _, j := range jobs {
		fmt.Fprintf(&b, "  - job_name: %s\n", j.name)
		if j.interval != "" {
			fmt.Fprintf(&b, "    scrape_interval: %s\n    scrape_timeout: 1s\n", j.interval)
		}
		if j.honor {
			b.WriteString("    honor_labels: true\n")
		}
		if j.protocols != "" {
			fmt.Fprintf(&b, "    scrape_protocols: %s\n", j.protocols)
		}
		if len(j.files) > 0 {
			b.WriteString("    file_sd_configs:\n      - refresh_interval: 1s\n        files:\n")
			for _, f := range j.files {
				fmt.Fprintf(&b, "          - %s\n", f)
			}
		}
		if j.httpSD != "" {
			fmt.Fprintf(&b, "    http_sd_configs:\n      - url: %s\n        refresh_interval: 1s\n", j.httpSD)
		}
		if j.relabel != "" {
			b.WriteString("    relabel_configs:\n" + j.relabel)
		}
	}
	return b.String()
}

// hashmod is the relabelling examples/prometheus.yml shows for sharding.
func hashmod(modulus, keep int) string {
	return fmt.Sprintf(`      - source_labels: [instance]
        modulus: %d
        target_label: __tmp_shard
        action: hashmod
      - source_labels: [__tmp_shard]
        regex: "%d"
        action: keep
`, modulus, keep)
}

// fakeWorker is a worker's metrics endpoint: a real HTTP server with a
// counter, answering 500 while broken.
type fakeWorker struct {
	srv    *httptest.Server
	broken atomic.Bool
}

func newWorker(t *testing.T) *fakeWorker {
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "units_processed_total", Help: "Units."})
	reg.MustRegister(c)
	c.Add(3)
	w := &fakeWorker{}
	h := promhttp.HandlerFor(reg, promhttp.HandlerOpts{EnableOpenMetrics: true})
	w.srv = httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		if w.broken.Load() {
			http.Error(rw, "broken on purpose", http.StatusInternalServerError)
			return
		}
		h.ServeHTTP(rw, r)
	}))
	t.Cleanup(w.srv.Close)
	return w
}

func (w *fakeWorker) addr() string { return strings.TrimPrefix(w.srv.URL, "http://") }

// registration is one target of sdwriter's output.
type registration struct {
	addr, job, instance string
}

// render is file_sd JSON as sdwriter writes it.
func render(regs ...registration) []byte {
	var b strings.Builder
	b.WriteString("[")
	for i, r := range regs {
		if i > 0 {
			b.WriteString(",")
		}
		host, slot, _ := strings.Cut(r.instance, "/")
		fmt.Fprintf(&b, `{"targets":[%q],"labels":{"__metrics_path__":"/metrics/%d-0123456789abcdef","host":%q,"instance":%q,"job":%q,"worker":%q}}`,
			r.addr, 1000+i, host, r.instance, r.job, slot)
	}
	b.WriteString("]\n")
	return []byte(b.String())
}

// output is sdwriter's output for a test: the files it writes (in shards
// or not) and an http_sd server serving them.
type output struct {
	t     *testing.T
	dir   string
	file  string // --output.file
	regs  [][]registration
	sd    *httptest.Server
	files []string
}

func newOutput(t *testing.T, shards int) *output {
	o := &output{t: t, dir: t.TempDir(), regs: make([][]registration, shards)}
	o.file = filepath.Join(o.dir, "workersd.json")
	for k := range shards {
		f := o.file
		if shards > 1 {
			f = sdfile.ShardFile(o.file, k, shards)
		}
		o.files = append(o.files, f)
	}
	o.sd = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		k := 0
		fmt.Sscan(r.URL.Query().Get("shard"), &k)
		w.Header().Set("Content-Type", "application/json")
		w.Write(render(o.regs[k]...))
	}))
	t.Cleanup(o.sd.Close)
	o.write()
	return o
}

// add puts a registration into the shard its instance hashes to.
func (o *output) add(r registration) {
	k := sdfile.Shard(r.instance, len(o.regs))
	o.regs[k] = append(o.regs[k], r)
	o.write()
}

func (o *output) write() {
	o.t.Helper()
	for k, f := range o.files {
		if err := os.MkdirAll(filepath.Dir(f), 0o755); err != nil {
			o.t.Fatal(err)
		}
		tmp := f + ".tmp"
		if err := os.WriteFile(tmp, render(o.regs[k]...), 0o644); err != nil {
			o.t.Fatal(err)
		}
		if err := os.Rename(tmp, f); err != nil {
			o.t.Fatal(err)
		}
	}
}

// Output is what a Checker compares the server with.
func (o *output) Output() Output {
	out := Output{Files: o.files}
	_, out.SDPort, _ = net.SplitHostPort(strings.TrimPrefix(o.sd.URL, "http://"))
	for _, regs := range o.regs {
		out.Shards = append(out.Shards, render(regs...))
	}
	return out
}

// instanceOn returns an instance name of host that hashes to shard k of n.
func instanceOn(host string, k, n int) string {
	for slot := 1; ; slot++ {
		inst := fmt.Sprintf("%s/%d", host, slot)
		if sdfile.Shard(inst, n) == k {
			return inst
		}
	}
}

// ids lists a result's finding IDs, for messages and comparisons.
func ids(r Result) []string {
	s := []string{}
	for _, f := range r.Findings {
		s = append(s, f.ID)
	}
	return s
}

// checkUntil checks until the result's finding IDs are want (in any order)
// with nothing pending, and returns that result; it fails the test after
// timeout.
func checkUntil(t *testing.T, c *Checker, o *output, timeout time.Duration, want ...string) Result {
	t.Helper()
	if want == nil {
		want = []string{}
	}
	var last Result
	poll.Until(t, timeout, func() bool {
		last = c.Check(context.Background(), o.Output())
		return fmt.Sprint(slices.Sorted(slices.Values(ids(last)))) == fmt.Sprint(slices.Sorted(slices.Values(want))) && last.Pending == 0
	}, "want findings %v and none pending; last check: %s", want, describe(&last))
	return last
}

type describer struct{ r *Result }

func describe(r *Result) fmt.Stringer { return describer{r} }

func (d describer) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%v pending %d", ids(*d.r), d.r.Pending)
	for _, f := range d.r.Findings {
		fmt.Fprintf(&b, "\n  %s %s [%s]: %s (fix: %s) %v", f.Severity, f.ID, f.Job, f.Message, f.Fix, f.Targets)
	}
	for _, j := range d.r.Jobs {
		fmt.Fprintf(&b, "\n  job %+v", j)
	}
	return b.String()
}

func writeFile(t *testing.T, path string, b []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path+".tmp", b, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(path+".tmp", path); err != nil {
		t.Fatal(err)
	}
}

func removeFile(t *testing.T, path string) {
	t.Helper()
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
}
