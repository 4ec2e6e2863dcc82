//go:build linux

package promcheck

import (
	"context"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// versions are the Prometheus servers each case runs against.
var versions = []struct {
	name string
	prom func(*testing.T) *promServer
	base []string // the findings of the recommended setup
}{
	{"3.15", prometheus3, nil},
	{"2.42", prometheus2, []string{IDVersion2}},
}

// Each misconfiguration of the issue gives exactly its finding, and loses
// it once fixed and checked again; the recommended setup gives none (on
// 2.42, only the version's warning). Real Prometheus servers, reloaded
// between cases; real worker endpoints.
func TestMatrix(t *testing.T) {
	for _, tc := range versions {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			p := tc.prom(t)
			is3 := tc.name == "3.15"
			o := newOutput(t, 1)
			w1, w2 := newWorker(t), newWorker(t)
			o.add(registration{w1.addr(), "api", "web-1/1"})
			o.add(registration{w2.addr(), "api", "web-1/2"})
			good := job{name: "workersd", files: []string{filepath.Join(o.dir, "*.json")}}
			p.start(renderConfig(good))
			c, err := New(Config{URL: p.URL()})
			if err != nil {
				t.Fatal(err)
			}
			want := func(extra ...string) []string { return append(append([]string{}, extra...), tc.base...) }
			r := checkUntil(t, c, o, 60*time.Second, want()...)
			if len(r.Jobs) != 1 || r.Jobs[0].Targets != 2 || r.Jobs[0].Up != 2 || r.Jobs[0].Keeps != "every target" {
				t.Fatalf("jobs: %+v", r.Jobs)
			}
			if !strings.HasPrefix(r.Version, tc.name) {
				t.Errorf("version %q, want %s.x", r.Version, tc.name)
			}

			// Each case: a configuration (or a change of the stack), its
			// finding, then the fix.
			cases := []struct {
				name  string
				id    string
				only3 bool
				apply func()
				fix   func()
				wait  time.Duration // target problems need to last
			}{
				{name: "scrape interval too long for the hold", id: IDScrapeIntervalTooLong,
					apply: func() { j := good; j.interval = "20s"; p.Reload(renderConfig(j)) },
					fix:   func() { p.Reload(renderConfig(good)) }},
				{name: "a job reading another file", id: IDOutputNotRead,
					apply: func() {
						j := good
						j.files = []string{filepath.Join(t.TempDir(), "*.json")}
						p.Reload(renderConfig(j))
					},
					fix: func() { p.Reload(renderConfig(good)) }},
				{name: "two jobs reading the output", id: IDOutputReadTwice,
					apply: func() { j := good; j.name = "again"; p.Reload(renderConfig(good, j)) },
					fix:   func() { p.Reload(renderConfig(good)) }},
				{name: "protocols without OpenMetrics or protobuf", id: IDScrapeProtocols, only3: true,
					apply: func() { j := good; j.protocols = "[PrometheusText0.0.4]"; p.Reload(renderConfig(j)) },
					fix:   func() { p.Reload(renderConfig(good)) }},
				{name: "relabelling rewrites instance", id: IDRelabelRewritesInstance,
					apply: func() {
						j := good
						j.relabel = "      - source_labels: [host]\n        target_label: instance\n"
						p.Reload(renderConfig(j))
					},
					fix: func() { p.Reload(renderConfig(good)) }},
				{name: "a target down", id: IDTargetDown, wait: 40 * time.Second,
					apply: func() { w2.broken.Store(true) },
					fix:   func() { w2.broken.Store(false) }},
				{name: "a target sdwriter does not serve", id: IDTargetNotServed, wait: 40 * time.Second,
					apply: func() {
						stale := filepath.Join(o.dir, "stale.json")
						w := newWorker(t)
						writeFile(t, stale, render(registration{w.addr(), "api", "web-9/1"}))
					},
					fix: func() { removeFile(t, filepath.Join(o.dir, "stale.json")) }},
				{name: "a target missing", id: IDTargetMissing, wait: 40 * time.Second,
					apply: func() {
						// sdwriter serves a registration its file lacks (a
						// write that failed, a file Prometheus does not see
						// change).
						o.regs[0] = append(o.regs[0], registration{newWorker(t).addr(), "api", "web-1/3"})
					},
					fix: func() { o.write() }},
			}
			for _, cs := range cases {
				if cs.only3 && !is3 {
					continue
				}
				t.Run(cs.name, func(t *testing.T) {
					cs.apply()
					start := time.Now()
					r := checkUntil(t, c, o, 10*time.Second+cs.wait, want(cs.id)...)
					t.Logf("%s after %s: %s", cs.id, time.Since(start).Round(time.Millisecond), describe(&r))
					f := r.Findings[slices.IndexFunc(r.Findings, func(f Finding) bool { return f.ID == cs.id })]
					if f.Message == "" || f.Fix == "" || f.Severity != severityOf(cs.id) {
						t.Errorf("finding without message, fix or its severity: %+v", f)
					}
					cs.fix()
					checkUntil(t, c, o, 10*time.Second+cs.wait, want()...)
				})
			}

			if is3 {
				t.Run("created timestamps off", func(t *testing.T) {
					p.Restart(renderConfig(good))
					checkUntil(t, c, o, 30*time.Second, IDCreatedTimestampsOff)
					p.Restart(renderConfig(good), "--enable-feature=created-timestamp-zero-ingestion")
					checkUntil(t, c, o, 30*time.Second)
				})
			}
			t.Run("unreachable", func(t *testing.T) {
				p.Stop()
				r := checkUntil(t, c, o, 10*time.Second, IDUnreachable)
				if !strings.Contains(r.Findings[0].Message, "cannot reach") {
					t.Errorf("message %q", r.Findings[0].Message)
				}
				p.start(renderConfig(good))
				checkUntil(t, c, o, 60*time.Second, want()...)
			})
		})
	}
}

// Sharded: sdwriter writes one file per shard; a server reading shard 0
// with a hashmod of the wrong modulus, or keeping the wrong shard, gets its
// finding; http_sd on sdwriter's /sd is recognised like the file.
func TestShards(t *testing.T) {
	for _, tc := range versions {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			testShards(t, tc.prom(t), tc.base)
		})
	}
}

func testShards(t *testing.T, p *promServer, base []string) {
	want := func(extra ...string) []string { return append(append([]string{}, extra...), base...) }
	o := newOutput(t, 2)
	for k := range 2 {
		for range 2 {
			w := newWorker(t)
			o.add(registration{w.addr(), "api", instanceOn("web-"+w.addr(), k, 2)})
		}
	}
	shard0 := job{name: "workersd", files: []string{o.files[0]}}
	p.start(renderConfig(shard0))
	c, err := New(Config{URL: p.URL()})
	if err != nil {
		t.Fatal(err)
	}
	r := checkUntil(t, c, o, 60*time.Second, want()...)
	if r.Jobs[0].Targets != 2 || !slices.Equal(r.Jobs[0].Shards, []int{0}) {
		t.Fatalf("jobs: %+v", r.Jobs)
	}
	for _, cs := range []struct {
		name    string
		relabel string
		id      string
	}{
		{"hashmod as sdwriter splits", hashmod(2, 0), ""},
		{"wrong modulus", hashmod(3, 0), IDHashmodModulus},
		{"wrong shard kept", hashmod(2, 1), IDHashmodWrongShard},
		{"hashmod on the address", strings.Replace(hashmod(2, 0), "[instance]", "[__address__]", 1), IDHashmodNotOnInstance},
		{"a drop rule beside the hashmod", hashmod(2, 0) + "      - source_labels: [job]\n        regex: api\n        action: drop\n", IDRelabelDropsTargets},
	} {
		t.Run(cs.name, func(t *testing.T) {
			j := shard0
			j.relabel = cs.relabel
			p.Reload(renderConfig(j))
			var ids []string
			if cs.id != "" {
				ids = []string{cs.id}
			}
			r := checkUntil(t, c, o, 40*time.Second, want(ids...)...)
			t.Logf("%s", describe(&r))
			p.Reload(renderConfig(shard0))
			checkUntil(t, c, o, 40*time.Second, want()...)
		})
	}
	t.Run("http_sd", func(t *testing.T) {
		j := job{name: "workersd", httpSD: o.sd.URL + "/sd?shard=1"}
		p.Reload(renderConfig(j))
		r := checkUntil(t, c, o, 40*time.Second, want()...)
		if !slices.Equal(r.Jobs[0].Shards, []int{1}) || r.Jobs[0].Up != 2 {
			t.Fatalf("jobs: %+v", r.Jobs)
		}
		j.relabel = hashmod(2, 0)
		p.Reload(renderConfig(j))
		checkUntil(t, c, o, 40*time.Second, want(IDHashmodWrongShard)...)
	})
}

// What is not Prometheus, or refuses to answer, is a finding that says so,
// never a crash and never "all good".
func TestNotPrometheus(t *testing.T) {
	o := newOutput(t, 1)
	for _, tc := range []struct {
		name    string
		handler http.HandlerFunc
		want    string
	}{
		{"a web page", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/html")
			w.Write([]byte("<html><body>Grafana</body></html>"))
		}, "not an answer of Prometheus' HTTP API"},
		{"unauthorised", func(w http.ResponseWriter, r *http.Request) {
			http.Error(w, "Unauthorized", http.StatusUnauthorized)
		}, "wants credentials"},
		{"an API error", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusServiceUnavailable)
			w.Write([]byte(`{"status":"error","errorType":"unavailable","error":"not ready"}`))
		}, "not ready"},
		{"JSON of another shape", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			w.Write([]byte(`{"status":"success","data":[1,2]}`))
		}, "unexpected data"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := httptest.NewServer(tc.handler)
			defer srv.Close()
			c, err := New(Config{URL: srv.URL})
			if err != nil {
				t.Fatal(err)
			}
			r := c.Check(context.Background(), o.Output())
			if got := ids(r); !slices.Equal(got, []string{IDUnreachable}) || !strings.Contains(r.Findings[0].Message, tc.want) {
				t.Fatalf("findings %v %s, want %s saying %q", got, describe(&r), IDUnreachable, tc.want)
			}
		})
	}
	t.Run("a configuration it cannot read", func(t *testing.T) {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			switch r.URL.Path {
			case "/api/v1/status/buildinfo":
				w.Write([]byte(`{"status":"success","data":{"version":"3.15.0"}}`))
			case "/api/v1/status/flags":
				w.Write([]byte(`{"status":"success","data":{"enable-feature":"created-timestamp-zero-ingestion"}}`))
			case "/api/v1/status/config":
				w.Write([]byte(`{"status":"success","data":{"yaml":"scrape_configs: {not: [a list"}}`))
			}
		}))
		defer srv.Close()
		c, _ := New(Config{URL: srv.URL})
		r := c.Check(context.Background(), o.Output())
		if got := ids(r); !slices.Equal(got, []string{IDConfigUnreadable}) {
			t.Fatalf("findings %v, want %s", got, IDConfigUnreadable)
		}
	})
}

func TestBadURL(t *testing.T) {
	for _, u := range []string{"", "localhost:9090", "ftp://x", "http://", "http://h:9090/?x=1"} {
		if _, err := New(Config{URL: u}); err == nil {
			t.Errorf("New(%q): no error", u)
		}
	}
}

// Two jobs reading the same shard are found whatever its number (the
// servers of a sharded setup read shards other than 0 and 1).
func TestReadTwiceAnyShard(t *testing.T) {
	jobs := []*jobCheck{
		{sc: &scrapeConfig{JobName: "a"}, shards: []int{2}},
		{sc: &scrapeConfig{JobName: "b"}, shards: []int{2}},
		{sc: &scrapeConfig{JobName: "c"}, shards: []int{0}},
	}
	fs := readTwice(jobs)
	if len(fs) != 1 || fs[0].ID != IDOutputReadTwice || !strings.Contains(fs[0].Message, "jobs a, b all read shard 2") {
		t.Fatalf("findings %+v, want one %s naming a, b and shard 2", fs, IDOutputReadTwice)
	}
}
