package main

import (
	"encoding/json"
	"fmt"
	"html/template"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/prometheus/common/version"

	"github.com/workersd/workersd/etcdsd"
	"github.com/workersd/workersd/internal/etcdhealth"
	"github.com/workersd/workersd/promcheck"
	"github.com/workersd/workersd/sdfile"
)

// status serves what sdwriter sees: the page at / and the same data as
// JSON at /api/v1/status, for "why is my worker not scraped?".
type status struct {
	disc      *etcdsd.Discoverer
	syncer    *sdfile.Syncer
	health    *etcdhealth.Reporter
	endpoints []string
	embedded  bool
	prefix    string
	shards    int
	paths     []string          // the output files, absolute
	checks    *promcheck.Runner // nil without --prometheus.url
}

// report is /api/v1/status.
type report struct {
	Version string `json:"version"`
	Etcd    struct {
		Endpoints []string `json:"endpoints"`
		Embedded  bool     `json:"embedded"`
		Prefix    string   `json:"prefix"`
		Reachable bool     `json:"reachable"`
		// Health is each endpoint's database size, size in use and
		// quota, and the cluster's active alarms.
		Health etcdhealth.Snapshot `json:"health"`
	} `json:"etcd"`
	Output    outputStatus  `json:"output"`
	Discovery etcdsd.Status `json:"discovery"`
	Query     etcdsd.Query  `json:"query"`
	// Prometheus is the last check of each --prometheus.url server; absent
	// without one.
	Prometheus []promcheck.Result `json:"prometheus,omitempty"`
}

// outputStatus is the output's part of /api/v1/status.
type outputStatus struct {
	sdfile.SyncStatus
	// Shards is --output.shards: /sd answers ?shard=0 to ?shard=Shards-1.
	Shards int `json:"shards"`
	// AbsFiles are the files as absolute paths, a symbolic link's own
	// rather than its target's: what Prometheus' file_sd patterns are
	// matched against (sdwriter check --sdwriter.url reads them here).
	AbsFiles []string `json:"abs_files,omitempty"`
}

// checksReport is /api/v1/checks, and what sdwriter check --format=json
// prints.
type checksReport struct {
	Prometheus []promcheck.Result `json:"prometheus"`
}

// query reads the page's selection; a bad parameter is an error naming it.
func query(r *http.Request) (etcdsd.Query, error) {
	v := r.URL.Query()
	q := etcdsd.Query{Job: v.Get("job"), Host: v.Get("host"), Limit: 100}
	for name, dst := range map[string]*int{"offset": &q.Offset, "limit": &q.Limit} {
		s := v.Get(name)
		if s == "" {
			continue
		}
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 || (name == "limit" && (n == 0 || n > etcdsd.MaxPage)) {
			return q, fmt.Errorf("%s=%q: want a whole number (limit: 1 to %d)", name, s, etcdsd.MaxPage)
		}
		*dst = n
	}
	return q, nil
}

func (s *status) report(q etcdsd.Query) report {
	var r report
	r.Version = version.Info()
	r.Etcd.Endpoints, r.Etcd.Embedded, r.Etcd.Prefix = s.endpoints, s.embedded, s.prefix
	r.Output = outputStatus{SyncStatus: s.syncer.Status(), Shards: s.shards, AbsFiles: s.paths}
	if s.checks != nil {
		r.Prometheus = s.checks.Results()
	}
	r.Discovery = s.disc.Status(q)
	r.Etcd.Reachable = r.Discovery.Reachable
	r.Etcd.Health = s.health.Snapshot()
	r.Query = q
	return r
}

func (s *status) serveJSON(w http.ResponseWriter, r *http.Request) {
	q, err := query(r)
	if err != nil {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusBadRequest)
		json.NewEncoder(w).Encode(map[string]string{"error": err.Error()})
		return
	}
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(s.report(q))
}

// serveChecks serves the last check of each --prometheus.url server,
// none without one.
func (s *status) serveChecks(w http.ResponseWriter, _ *http.Request) {
	rep := checksReport{Prometheus: []promcheck.Result{}}
	if s.checks != nil {
		rep.Prometheus = s.checks.Results()
	}
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(rep)
}

func (s *status) serveHTML(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/" {
		http.NotFound(w, r)
		return
	}
	q, err := query(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	rep := s.report(q)
	page := struct {
		report
		Now        time.Time
		Prev, Next string
		First      int
	}{report: rep, Now: time.Now()}
	if len(rep.Discovery.Page) > 0 {
		page.First = q.Offset + 1 // the page is not empty: the offset is below the number of registrations
	}
	link := func(offset int) string {
		v := url.Values{}
		if q.Job != "" {
			v.Set("job", q.Job)
		}
		if q.Host != "" {
			v.Set("host", q.Host)
		}
		v.Set("offset", strconv.Itoa(offset))
		v.Set("limit", strconv.Itoa(q.Limit))
		return "/?" + v.Encode()
	}
	if q.Offset > 0 {
		page.Prev = link(max(0, q.Offset-q.Limit))
	}
	// Offset and limit are any whole numbers up to the largest int: their
	// sum would wrap to a negative offset. Matching - limit cannot.
	if q.Offset < rep.Discovery.Matching-q.Limit {
		page.Next = link(q.Offset + q.Limit)
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	if err := statusTemplate.Execute(w, page); err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
	}
}

var statusTemplate = template.Must(template.New("status").Funcs(template.FuncMap{
	"age": func(now, t time.Time) string {
		if t.IsZero() {
			return ""
		}
		return now.Sub(t).Round(time.Second).String()
	},
	"when": func(t time.Time) string {
		if t.IsZero() {
			return "never"
		}
		return t.UTC().Format(time.RFC3339)
	},
	"add":    func(a, b int) int { return a + b },
	"sub":    func(a, b int) int { return a - b },
	"ms":     func(d time.Duration) time.Duration { return d.Round(time.Millisecond) },
	"plural": plural,
	"bytes": func(n int64) string {
		switch {
		case n < 1<<20:
			return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
		case n < 1<<30:
			return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
		default:
			return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
		}
	},
	"percent": func(n, of int64) string {
		p := 100 * float64(n) / float64(of)
		if p < 10 {
			return fmt.Sprintf("%.1f %%", p)
		}
		return fmt.Sprintf("%.0f %%", p)
	},
}).Parse(`<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>sdwriter</title>
<style>
body { font-family: sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: left; font-size: 90%; }
th { background: #f0f0f0; }
.bad { color: #b00; font-weight: bold; }
.good { color: #070; font-weight: bold; }
.dup td { color: #888; }
.warn { color: #a60; font-weight: bold; }
code { font-size: 90%; }
</style>
</head>
<body>
<h1>sdwriter</h1>
<p>workersd registrations in etcd as Prometheus targets. <a href="/metrics">Metrics</a> · <a href="/sd">Targets (http_sd)</a> · <a href="/api/v1/status">This page as JSON</a> · <a href="/-/ready">Readiness</a></p>
<p><small>{{.Version}}</small></p>

<h2 id="etcd">etcd</h2>
<table>
<tr><th>endpoints</th><td>{{range $i, $e := .Etcd.Endpoints}}{{if $i}}, {{end}}<code>{{$e}}</code>{{end}}{{if .Etcd.Embedded}} (embedded){{end}}</td></tr>
<tr><th>prefix</th><td><code>{{.Etcd.Prefix}}</code></td></tr>
<tr><th>reachable</th><td id="etcd-reachable">{{if .Etcd.Reachable}}<span class="good">yes</span>{{else}}<span class="bad">no</span>: the targets already written stay as they are{{end}}</td></tr>
<tr><th>first listing</th><td>{{if .Discovery.Synced}}done{{else}}<span class="bad">not done yet</span>{{end}}</td></tr>
<tr><th>alarms</th><td id="etcd-alarms">{{with .Etcd.Health}}{{if .Alarms}}{{range .Alarms}}<p class="alarm"><span class="bad">{{.Alarm}}</span> on member <code>{{.MemberID}}</code> since {{when .Since}}: {{.Action}}</p>{{end}}{{else if .CheckedAt.IsZero}}not checked yet{{else}}<span class="good">none</span>{{end}}{{if .AlarmsError}} <span class="bad">(could not list them: {{.AlarmsError}})</span>{{end}}{{end}}</td></tr>
</table>
<table>
<tr><th>member</th><th>database</th><th>in use</th><th>quota</th><th>version</th><th>leader</th><th>errors</th></tr>
{{range .Etcd.Health.Endpoints}}<tr class="member"><td><code>{{.Endpoint}}</code></td>{{if .Error}}<td colspan="6"><span class="bad">no answer</span>: {{.Error}}</td>{{else}}<td>{{bytes .DBSizeBytes}}{{if .QuotaBytes}}, {{percent .DBSizeBytes .QuotaBytes}} of the quota{{end}}</td><td>{{bytes .DBSizeInUseBytes}}</td><td>{{if .QuotaBytes}}{{bytes .QuotaBytes}}{{else}}unknown{{end}}</td><td>{{.Version}}</td><td>{{if .Leader}}yes{{else}}no{{end}}</td><td>{{range .Errors}}<span class="bad">{{.}}</span> {{end}}</td>{{end}}</tr>
{{end}}</table>

<h2 id="output">Output</h2>
<table>
<tr><th>files</th><td>{{range .Output.Files}}<code>{{.}}</code> {{else}}none (http_sd on /sd only){{end}}</td></tr>
<tr><th>last write</th><td id="last-write">{{when .Output.LastWrite}}</td></tr>
<tr><th>last error</th><td id="last-error">{{if .Output.LastError}}<span class="bad">{{.Output.LastError}}</span> at {{when .Output.LastErrorAt}}{{else}}none{{end}}</td></tr>
<tr><th>size</th><td>{{.Output.Bytes}} bytes</td></tr>
</table>

<h2 id="prometheus">Prometheus servers reading the output</h2>
{{range .Prometheus}}<div class="prometheus">
<h3><code>{{.URL}}</code></h3>
<table>
<tr><th>version</th><td>{{if .Version}}{{.Version}}{{else}}unknown{{end}}</td></tr>
<tr><th>last checked</th><td class="checked">{{if .Checked.IsZero}}not checked yet{{else}}{{when .Checked}}, {{age $.Now .Checked}} ago, in {{ms .Took}}{{end}}</td></tr>
<tr><th>result</th><td class="check-result">{{if .Checked.IsZero}}not checked yet{{else if .Findings}}<span class="bad">{{plural .Errors "error"}}</span>, {{plural (sub (len .Findings) .Errors) "warning"}}{{else}}<span class="good">no findings</span>: set up for exact totals{{end}}</td></tr>
<tr><th>pending</th><td class="pending">{{plural .Pending "target problem"}} seen but too recent to be findings{{if .Pending}}: confirmed or cleared by a check after {{when .ConfirmAt}}{{end}}</td></tr>
</table>
{{if .Jobs}}<table>
<tr><th>job</th><th>reads</th><th>shards</th><th>interval</th><th>timeout</th><th>protocols</th><th>keeps</th><th>targets</th><th>active</th><th>up</th></tr>
{{range .Jobs}}<tr class="job"><td>{{.Name}}</td><td>{{range .Reads}}<code>{{.}}</code> {{end}}</td><td>{{range $i, $k := .Shards}}{{if $i}}, {{end}}{{$k}}{{end}}</td><td>{{.ScrapeInterval}}</td><td>{{.ScrapeTimeout}}</td><td>{{range $i, $p := .Protocols}}{{if $i}}, {{end}}{{$p}}{{else}}default{{end}}</td><td>{{.Keeps}}</td><td>{{.Targets}}</td><td>{{.Active}}</td><td>{{.Up}}</td></tr>
{{end}}</table>
{{end}}{{if .Findings}}<table>
<tr><th>severity</th><th>check</th><th>job</th><th>problem</th><th>cost</th><th>fix</th><th>targets</th></tr>
{{range .Findings}}<tr class="finding {{.Severity}}"><td><span class="{{if eq .Severity "error"}}bad{{else}}warn{{end}}">{{.Severity}}</span></td><td><code>{{.ID}}</code></td><td>{{.Job}}</td><td>{{.Message}}</td><td>{{.Cost}}</td><td>{{.Fix}}</td><td>{{range .Targets}}<code>{{.}}</code> {{end}}{{if gt .Count (len .Targets)}}and {{sub .Count (len .Targets)}} more{{end}}</td></tr>
{{end}}</table>
{{end}}</div>
{{else}}<p id="prometheus-off">Not checked: give sdwriter a <code>--prometheus.url</code> for each Prometheus server that reads its output, and it checks that each is set up for exact totals (docs/CHECKS.md).</p>
{{end}}{{if .Prometheus}}<p><a href="/api/v1/checks">The checks as JSON</a></p>
{{end}}
<h2 id="jobs">Registrations by job</h2>
<p>{{.Discovery.Registrations}} registrations, {{.Discovery.Targets}} targets.</p>
<table>
<tr><th>job</th><th>registrations</th><th>hosts</th></tr>
{{range .Discovery.Jobs}}<tr><td><a href="/?job={{.Job}}">{{.Job}}</a></td><td>{{.Registrations}}</td><td>{{.Hosts}}</td></tr>
{{end}}</table>

<h2 id="registrations">Registrations{{if .Query.Job}} of job {{.Query.Job}}{{end}}{{if .Query.Host}} on host {{.Query.Host}}{{end}}</h2>
<form method="get" action="/">job <input name="job" value="{{.Query.Job}}"> host <input name="host" value="{{.Query.Host}}"> <button>show</button></form>
<p>{{if .Discovery.Page}}{{.First}} to {{add .First (len .Discovery.Page) | add -1}} of {{.Discovery.Matching}}{{else}}none of {{.Discovery.Matching}}{{end}}{{if .Prev}} · <a href="{{.Prev}}">previous</a>{{end}}{{if .Next}} · <a href="{{.Next}}">next</a>{{end}}</p>
<table>
<tr><th>job</th><th>host</th><th>slot</th><th>address</th><th>pid</th><th>started</th><th>age</th><th>labels</th><th>target</th><th>key</th></tr>
{{range .Discovery.Page}}<tr class="registration{{if not .Shown}} dup{{end}}"><td>{{.Job}}</td><td>{{.Host}}</td><td>{{.Slot}}</td><td><code>{{.Address}}</code></td><td>{{if .PID}}{{.PID}}{{end}}</td><td>{{if not .StartedAt.IsZero}}{{when .StartedAt}}{{end}}</td><td>{{age $.Now .StartedAt}}</td><td>{{range $k, $v := .Labels}}{{$k}}="{{$v}}" {{end}}</td><td>{{if .Shown}}yes{{else}}no: duplicate{{end}}</td><td><code>{{.Key}}</code></td></tr>
{{end}}</table>

<h2 id="rejected">Rejected keys ({{.Discovery.RejectedTotal}})</h2>
<p>Keys under the prefix that are not valid registrations: skipped, never written.</p>
<table>
<tr><th>key</th><th>reason</th><th>error</th></tr>
{{range .Discovery.Rejected}}<tr class="rejected"><td><code>{{.Key}}</code></td><td>{{.Reason}}</td><td>{{.Error}}</td></tr>
{{end}}</table>

<h2 id="duplicates">Dropped duplicates ({{.Discovery.DuplicatesTotal}})</h2>
<p>Registrations naming an address another registration names too: only the one created last is a target.</p>
<table>
<tr><th>address</th><th>dropped</th><th>target</th></tr>
{{range .Discovery.Duplicates}}<tr class="duplicate"><td><code>{{.Address}}</code></td><td><code>{{.Dropped}}</code></td><td><code>{{.Winner}}</code></td></tr>
{{end}}</table>
</body>
</html>
`))
