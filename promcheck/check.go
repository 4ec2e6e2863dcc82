package promcheck

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/relabel"

	"github.com/workersd/workersd/registrar"
)

const (
	// DefaultFinalScrapeTimeout is how long a stopping worker waits for its
	// final scrape by default (worker.DefaultFinalScrapeTimeout, and the
	// clients' default).
	DefaultFinalScrapeTimeout = 15 * time.Second
	// DefaultTimeout bounds one check of one server.
	DefaultTimeout = 30 * time.Second
	// discoveryDelay is how long Prometheus may take to scrape a change of
	// sdwriter's output: its discovery manager passes changes on every 5 s
	// and the scrape manager reloads every 5 s (--scrape.discovery-reload-interval).
	discoveryDelay = 10 * time.Second
	// holdMargin is what the slot hold needs beyond one scrape interval:
	// the discovery delay and 5 s to spare (docs/KEYS.md, "Why a freed
	// slot is held").
	holdMargin = 15 * time.Second
)

// Config configures a Checker.
type Config struct {
	// URL of the Prometheus server, as its users open it (with its
	// --web.route-prefix, if any).
	URL string
	// Client asks it: TLS, authentication, proxies. Optional, defaults to
	// http.DefaultClient; each check is bounded by Timeout.
	Client *http.Client
	// Timeout bounds one check. Optional, defaults to DefaultTimeout.
	Timeout time.Duration
	// SlotHold is how long the workers' registrars hold a freed slot
	// (worker.Config.SlotHold, workersd-agent --slot-hold). Optional,
	// defaults to registrar.DefaultSlotHold; negative: no hold.
	SlotHold time.Duration
	// FinalScrapeTimeout is how long a stopping worker waits for its final
	// scrape. Optional, defaults to DefaultFinalScrapeTimeout; negative:
	// the workers wait for none.
	FinalScrapeTimeout time.Duration
}

// Checker checks one Prometheus server. It remembers the target problems
// it saw, so that one is a finding only once it has lasted; its methods
// are safe for concurrent use.
type Checker struct {
	cfg  Config
	base *url.URL

	mu      sync.Mutex
	pending map[string]time.Time // target problem -> when first seen
}

// New returns a Checker for the server at cfg.URL.
func New(cfg Config) (*Checker, error) {
	u, err := url.Parse(cfg.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("Prometheus URL %q: want http:// or https:// and a host, such as http://localhost:9090", cfg.URL)
	}
	if u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("Prometheus URL %q: want no query or fragment, only the server's address and route prefix", cfg.URL)
	}
	if cfg.Client == nil {
		cfg.Client = http.DefaultClient
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.SlotHold == 0 {
		cfg.SlotHold = registrar.DefaultSlotHold
	}
	if cfg.FinalScrapeTimeout == 0 {
		cfg.FinalScrapeTimeout = DefaultFinalScrapeTimeout
	}
	return &Checker{cfg: cfg, base: u, pending: map[string]time.Time{}}, nil
}

// URL is the server's URL without credentials, as results name it.
func (c *Checker) URL() string { return c.base.Redacted() }

// Result is one check of one server.
type Result struct {
	URL string `json:"url"`
	// Checked is when the check began; zero before the first.
	Checked time.Time `json:"checked,omitzero"`
	// Took is how long the check took.
	Took time.Duration `json:"took_ns"`
	// Version is the server's, when it answered.
	Version string `json:"version,omitempty"`
	// Jobs are the scrape jobs that read sdwriter's output.
	Jobs     []Job     `json:"jobs"`
	Findings []Finding `json:"findings"`
	// Pending counts target problems seen but too recent to be findings:
	// Prometheus may not have caught up with sdwriter yet. A check after
	// ConfirmAt reports those that are still there.
	Pending   int       `json:"pending"`
	ConfirmAt time.Time `json:"confirm_at,omitzero"`
}

// Errors counts the findings of severity error.
func (r Result) Errors() int {
	n := 0
	for _, f := range r.Findings {
		if f.Severity == Error {
			n++
		}
	}
	return n
}

// Job is a scrape job that reads sdwriter's output, as the server runs it.
type Job struct {
	Name string `json:"name"`
	// Reads are the file patterns and http_sd URLs that match sdwriter's
	// output, and Shards the shards they read.
	Reads          []string `json:"reads"`
	Shards         []int    `json:"shards"`
	ScrapeInterval string   `json:"scrape_interval"`
	ScrapeTimeout  string   `json:"scrape_timeout"`
	// Protocols is the job's scrape_protocols (Prometheus 3).
	Protocols []string `json:"scrape_protocols,omitempty"`
	// Keeps says which targets its relabelling keeps.
	Keeps string `json:"keeps"`
	// Targets is how many of sdwriter's targets the job should scrape,
	// Active how many of them it does, Up how many of those are up.
	Targets int `json:"targets"`
	Active  int `json:"active"`
	Up      int `json:"up"`
}

// Check asks the server what it runs and compares it with out.
func (c *Checker) Check(ctx context.Context, out Output) Result {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	start := time.Now()
	r := Result{URL: c.URL(), Checked: start, Jobs: []Job{}, Findings: []Finding{}}
	c.check(ctx, out, &r)
	sortFindings(r.Findings)
	r.Took = time.Since(start)
	return r
}

func (c *Checker) check(ctx context.Context, out Output, r *Result) {
	srv, err := fetchServer(ctx, c.cfg.Client, c.base)
	if err != nil {
		r.Findings = append(r.Findings, unreachable(err))
		c.forgetPending()
		return
	}
	r.Version = srv.version
	r.Findings = append(r.Findings, checkVersion(srv)...)
	cfg, err := parseConfig(srv.config)
	if err != nil {
		r.Findings = append(r.Findings, newFinding(IDConfigUnreadable, "",
			"Prometheus' loaded configuration (/api/v1/status/config) cannot be read: "+err.Error(),
			"nothing of its scrape jobs can be checked",
			"report this with the configuration attached; only the version and the flags were checked"))
		c.forgetPending()
		return
	}
	shards := make([][]target, len(out.Shards))
	for k, b := range out.Shards {
		if shards[k], err = parseShard(b); err != nil {
			// sdwriter's own output: a bug, not the user's setup.
			r.Findings = append(r.Findings, newFinding(IDConfigUnreadable, "", fmt.Sprintf("shard %d: %v", k, err), "", "report this bug"))
			return
		}
	}
	var jobs []*jobCheck
	for _, sc := range cfg.ScrapeConfigs {
		srcs, err := out.sources(sc)
		if err != nil {
			r.Findings = append(r.Findings, newFinding(IDConfigUnreadable, sc.JobName, err.Error(), "", "fix the pattern"))
			continue
		}
		if len(srcs) > 0 {
			jobs = append(jobs, newJobCheck(sc, srcs, shards))
		}
	}
	if len(jobs) == 0 {
		r.Findings = append(r.Findings, notRead(cfg, out))
		c.forgetPending()
		return
	}
	r.Findings = append(r.Findings, readTwice(jobs)...)
	for _, j := range jobs {
		r.Findings = append(r.Findings, c.checkJob(j, len(out.Shards))...)
	}
	active, err := fetchTargets(ctx, c.cfg.Client, c.base)
	if err != nil {
		r.Findings = append(r.Findings, unreachable(err))
		c.forgetPending()
		return
	}
	r.Findings = append(r.Findings, c.checkTargets(jobs, active, r)...)
	for _, j := range jobs {
		r.Jobs = append(r.Jobs, j.summary())
	}
}

func unreachable(err error) Finding {
	var ae *apiError
	msg := err.Error()
	if errors.As(err, &ae) {
		msg = ae.msg
	}
	return newFinding(IDUnreachable, "", msg,
		"nothing about this server can be checked; sdwriter does not know whether its totals are right",
		"check --prometheus.url (the address Prometheus' web UI has, with its route prefix) and, for TLS or authentication, --prometheus.http-config-file")
}

func checkVersion(srv *server) []Finding {
	major, _, _ := strings.Cut(strings.TrimPrefix(srv.version, "v"), ".")
	if n, err := strconv.Atoi(major); err == nil && n < 3 {
		return []Finding{newFinding(IDVersion2, "",
			fmt.Sprintf("Prometheus %s: 2.x before 2.50 cannot ingest created timestamps (2.50 to 2.55 only behind an experimental flag, not measured with workersd), so it does not see a counter's restart once the new worker has counted past the old one before its first scrape", srv.version),
			"measured with 2.42: graceful restarts' increase() 74 % short (raw samples 1 % short), kill -9 restarts' increase() 79 % short, a counter at 1 per lifetime 4 % short (docs/RESTARTS.md)",
			"run Prometheus 3 with --enable-feature=created-timestamp-zero-ingestion")}
	}
	features := map[string]bool{}
	for f := range strings.SplitSeq(srv.flags["enable-feature"], ",") {
		features[strings.TrimSpace(f)] = true
	}
	if features["created-timestamp-zero-ingestion"] {
		return nil
	}
	msg := "--enable-feature=created-timestamp-zero-ingestion is off: Prometheus stores no zero sample at a counter's created timestamp, so a restart where the new worker counted past the old one before its first scrape looks like no restart"
	if features["st-storage"] {
		msg += " (st-storage is on: it keeps start timestamps beside the samples, which the raw-sample totals and the measured setup do not use)"
	}
	return []Finding{newFinding(IDCreatedTimestampsOff, "", msg,
		"measured with 3.15 without the flag: graceful restarts' increase() 72 % short, kill -9 restarts' increase() 100 % short, a counter at 1 per lifetime 8 % short (docs/RESTARTS.md)",
		"start Prometheus with --enable-feature=created-timestamp-zero-ingestion")}
}

func notRead(cfg *promConfig, out Output) Finding {
	var what []string
	for _, f := range out.Files {
		what = append(what, "file "+f)
	}
	if out.SDPort != "" {
		what = append(what, "http_sd at /sd on port "+out.SDPort)
	}
	if len(what) == 0 {
		what = append(what, "nothing Prometheus can be matched against")
	}
	var reads []string
	for _, sc := range cfg.ScrapeConfigs {
		for _, f := range sc.FileSD {
			for _, p := range f.Files {
				reads = append(reads, fmt.Sprintf("%s reads %s", sc.JobName, p))
			}
		}
		for _, h := range sc.HTTPSD {
			reads = append(reads, fmt.Sprintf("%s asks %s", sc.JobName, h.URL))
		}
	}
	msg := "no scrape job reads sdwriter's output (" + strings.Join(what, ", ") + ")"
	if len(reads) > 0 {
		msg += "; the server's file and HTTP discovery: " + strings.Join(reads, "; ")
	}
	return newFinding(IDOutputNotRead, "", msg,
		"none of sdwriter's targets is scraped by this server",
		"point a job's file_sd_configs files at sdwriter's --output.file (or its shard's file), or its http_sd_configs url at sdwriter's /sd, as examples/prometheus.yml does")
}

// readTwice finds shards that more than one job reads: each of their
// targets is scraped by each job, and sums count it as often.
func readTwice(jobs []*jobCheck) []Finding {
	readers := map[int][]string{}
	for _, j := range jobs {
		for _, k := range j.shards {
			readers[k] = append(readers[k], j.sc.JobName)
		}
	}
	var fs []Finding
	for _, k := range slices.Sorted(maps.Keys(readers)) {
		names := readers[k]
		if len(names) < 2 {
			continue
		}
		fs = append(fs, newFinding(IDOutputReadTwice, "",
			fmt.Sprintf("jobs %s all read shard %d of sdwriter's output: each of its targets is scraped once per job", strings.Join(names, ", "), k),
			"every sum over the workers counts each worker once per job (the job label comes from the registration, so the copies are not even told apart by it)",
			"keep one job reading sdwriter's output: remove the others' file_sd files or http_sd url that match it"))
	}
	return fs
}

// jobCheck is one job that reads sdwriter's output, and what its
// relabelling does to sdwriter's targets.
type jobCheck struct {
	sc         *scrapeConfig
	srcs       []source
	shards     []int    // the shards it reads
	targets    []target // their targets
	kept       []target // those its relabelling keeps
	expected   map[string]target
	active, up int
}

func newJobCheck(sc *scrapeConfig, srcs []source, shards [][]target) *jobCheck {
	j := &jobCheck{sc: sc, srcs: srcs, expected: map[string]target{}}
	for _, s := range srcs {
		for _, k := range s.shards {
			if !slices.Contains(j.shards, k) {
				j.shards = append(j.shards, k)
			}
		}
	}
	slices.Sort(j.shards)
	for _, k := range j.shards {
		j.targets = append(j.targets, shards[k]...)
	}
	return j
}

func (j *jobCheck) summary() Job {
	s := Job{Name: j.sc.JobName, Shards: j.shards, ScrapeInterval: j.sc.ScrapeInterval.String(), ScrapeTimeout: j.sc.ScrapeTimeout.String(),
		Protocols: j.sc.ScrapeProtocols, Keeps: j.keeps(), Targets: len(j.expected), Active: j.active, Up: j.up}
	for _, src := range j.srcs {
		s.Reads = append(s.Reads, src.desc)
	}
	return s
}

func (j *jobCheck) keeps() string {
	h, i := j.hashmod()
	if h == nil {
		if len(j.kept) < len(j.targets) {
			return fmt.Sprintf("%d of %d targets (relabelling drops the others)", len(j.kept), len(j.targets))
		}
		return "every target"
	}
	return fmt.Sprintf("hashmod of %s, modulus %d: keeps %s", joinLabels(h.SourceLabels), h.Modulus, shardList(keptShards(j.sc.RelabelConfigs, i)))
}

func shardList(ks []int) string {
	if len(ks) == 0 {
		return "no shard"
	}
	s := make([]string, len(ks))
	for i, k := range ks {
		s[i] = strconv.Itoa(k)
	}
	if len(ks) == 1 {
		return "shard " + s[0]
	}
	return "shards " + strings.Join(s, ", ")
}

// hashmod returns the job's first hashmod relabelling and its index.
func (j *jobCheck) hashmod() (*relabel.Config, int) {
	for i, rc := range j.sc.RelabelConfigs {
		if rc.Action == relabel.HashMod {
			return rc, i
		}
	}
	return nil, -1
}

// keptShards runs the relabelling after a hashmod (cfgs[i]) for each value
// the hashmod can give: the shards the job keeps, whatever the targets.
func keptShards(cfgs []*relabel.Config, i int) []int {
	h := cfgs[i]
	var kept []int
	for v := range int(min(h.Modulus, 1<<16)) {
		lb := labels.NewBuilder(labels.FromStrings(h.TargetLabel, strconv.Itoa(v), model.InstanceLabel, "x", model.JobLabel, "x", model.AddressLabel, "x"))
		if relabel.ProcessBuilder(lb, cfgs[i+1:]...) {
			kept = append(kept, v)
		}
	}
	return kept
}

// discovered is t's labels as Prometheus has them before relabelling.
func (j *jobCheck) discovered(t target) *labels.Builder {
	lb := labels.NewBuilder(labels.EmptyLabels())
	for k, v := range t.labels {
		lb.Set(k, v)
	}
	// What Prometheus sets when the target lacks it.
	for k, v := range map[string]string{model.JobLabel: j.sc.JobName, model.MetricsPathLabel: "/metrics", model.SchemeLabel: "http",
		model.ScrapeIntervalLabel: j.sc.ScrapeInterval.String(), model.ScrapeTimeoutLabel: j.sc.ScrapeTimeout.String()} {
		if lb.Get(k) == "" {
			lb.Set(k, v)
		}
	}
	return lb
}

// withoutSharding is cfgs without their hashmod rules and the keep and drop
// rules on a hashmod's label.
func withoutSharding(cfgs []*relabel.Config) []*relabel.Config {
	shardLabels := map[string]bool{}
	var out []*relabel.Config
	for _, rc := range cfgs {
		switch {
		case rc.Action == relabel.HashMod:
			shardLabels[rc.TargetLabel] = true
		case (rc.Action == relabel.Keep || rc.Action == relabel.Drop) && len(rc.SourceLabels) == 1 && shardLabels[string(rc.SourceLabels[0])]:
		default:
			out = append(out, rc)
		}
	}
	return out
}

// checkJob checks a job's settings and runs its relabelling on its targets.
func (c *Checker) checkJob(j *jobCheck, nShards int) []Finding {
	var fs []Finding
	name := j.sc.JobName
	if f, ok := c.checkInterval(j); ok {
		fs = append(fs, f)
	}
	if f, ok := checkProtocols(j); ok {
		fs = append(fs, f)
	}
	if j.sc.HonorLabels {
		fs = append(fs, newFinding(IDHonorLabels, name,
			"honor_labels is true: labels a worker exposes on its own series (instance, job, worker, host) replace the target's",
			"a worker exposing such a label merges its series with another worker's or splits them from their slot; sums and the slot-bounded series count no longer hold",
			"remove honor_labels from the job, or make sure no worker exposes instance, job, worker or host"))
	}
	// Targets a hashmod drops are another server's; what the other rules
	// drop is a finding of its own.
	unsharded := withoutSharding(j.sc.RelabelConfigs)
	var dropped, rewroteInstance, rewroteJob []target
	for _, t := range j.targets {
		lb := j.discovered(t)
		if !relabel.ProcessBuilder(lb, j.sc.RelabelConfigs...) {
			if !relabel.ProcessBuilder(j.discovered(t), unsharded...) {
				dropped = append(dropped, t)
			}
			continue
		}
		j.kept = append(j.kept, t)
		j.expected[targetKey(t.labels)] = t
		inst := lb.Get(model.InstanceLabel)
		if inst == "" {
			inst = lb.Get(model.AddressLabel)
		}
		if inst != t.labels[model.InstanceLabel] {
			rewroteInstance = append(rewroteInstance, t)
		}
		if lb.Get(model.JobLabel) != t.labels[model.JobLabel] {
			rewroteJob = append(rewroteJob, t)
		}
	}
	h, i := j.hashmod()
	if h != nil {
		if len(h.SourceLabels) != 1 || h.SourceLabels[0] != model.InstanceLabel {
			fs = append(fs, newFinding(IDHashmodNotOnInstance, name,
				fmt.Sprintf("the job's hashmod hashes %s, not instance", joinLabels(h.SourceLabels)),
				"a restarted worker has a new address and keeps its slot's instance: its series can move to another server, which does not see the restart on a reused slot; sdwriter's shards are split by instance",
				"hash the instance label: source_labels: [instance]"))
		} else if len(j.shards) == 1 && nShards > 1 {
			k := j.shards[0]
			if int(h.Modulus) != nShards {
				fs = append(fs, newFinding(IDHashmodModulus, name,
					fmt.Sprintf("the job reads shard %d of sdwriter's %d and its hashmod's modulus is %d: it keeps %d of the shard's %d targets", k, nShards, h.Modulus, len(j.kept), len(j.targets)),
					"the hashmod keeps only part of the shard's targets, which no other server scrapes: those workers are not scraped at all",
					fmt.Sprintf("set the hashmod's modulus to %d (sdwriter's --output.shards) and keep %d, or drop the hashmod: the shard's file is split already", nShards, k)))
			} else if kept := keptShards(j.sc.RelabelConfigs, i); !slices.Equal(kept, []int{k}) {
				fs = append(fs, newFinding(IDHashmodWrongShard, name,
					fmt.Sprintf("the job reads shard %d of sdwriter's %d and its hashmod keeps %s: it keeps %d of the shard's %d targets", k, nShards, shardList(kept), len(j.kept), len(j.targets)),
					"targets of the shard the job reads are dropped (and the server scrapes nothing of another shard): those workers are not scraped at all",
					fmt.Sprintf("keep regex \"%d\" on the hashmod's label, or read the file of the shard the server keeps (shard-%d-of-%d)", k, firstOr(kept, k), nShards)))
			}
		}
	}
	if len(dropped) > 0 {
		fs = append(fs, withTargets(newFinding(IDRelabelDropsTargets, name,
			fmt.Sprintf("the job's relabelling drops %d of sdwriter's %d targets", len(dropped), len(j.targets)),
			"those workers are not scraped by this server; if no other server scrapes them, their counts are missing from every total",
			"if that is meant (another server scrapes them), nothing; else remove the keep or drop rule that matches them"), dropped))
	}
	if len(rewroteInstance) > 0 {
		fs = append(fs, withTargets(newFinding(IDRelabelRewritesInstance, name,
			fmt.Sprintf("the job's relabelling rewrites the instance label of %d targets", len(rewroteInstance)),
			"instance is the worker's slot (host/slot): rewritten, two workers can share a series, which then counts neither right, or a slot's series is no longer bounded",
			"remove the relabel rule that writes instance; put what you need in another label"), rewroteInstance))
	}
	if len(rewroteJob) > 0 {
		fs = append(fs, withTargets(newFinding(IDRelabelRewritesJob, name,
			fmt.Sprintf("the job's relabelling rewrites the job label of %d targets", len(rewroteJob)),
			"the recording rules and alerts in examples/ group by the registration's job; rewritten, workers of different applications may be summed together",
			"remove the relabel rule that writes job, unless every worker of a job keeps its own"), rewroteJob))
	}
	return fs
}

func firstOr(ks []int, d int) int {
	if len(ks) > 0 {
		return ks[0]
	}
	return d
}

// withTargets names some of ts in f, and counts them.
func withTargets(f Finding, ts []target) Finding {
	f.Count = len(ts)
	for _, t := range ts[:min(len(ts), maxExamples)] {
		f.Targets = append(f.Targets, t.String())
	}
	return f
}

func (c *Checker) checkInterval(j *jobCheck) (Finding, bool) {
	iv := time.Duration(j.sc.ScrapeInterval)
	var why, fix []string
	if hold := c.cfg.SlotHold; hold < 0 {
		// No hold: a reused slot is always at risk, whatever the interval.
		why = append(why, "the workers hold no slot (sdwriter --check.slot-hold=0s, as their worker.Config.SlotHold or workersd-agent --slot-hold=0s), so a restarted worker may reuse its slot while Prometheus still scrapes the old one")
		fix = append(fix, fmt.Sprintf("give the workers a slot hold of at least %s", iv+holdMargin))
	} else if iv+holdMargin > hold {
		why = append(why, fmt.Sprintf("a restarted worker's slot is held %s, which must exceed the scrape interval by %s", hold, holdMargin))
		fix = append(fix, fmt.Sprintf("raise the workers' slot hold (worker.Config.SlotHold, workersd-agent --slot-hold; then sdwriter --check.slot-hold) to at least %s or scrape at least every %s", iv+holdMargin, max(hold-holdMargin, time.Second)))
	}
	if f := c.cfg.FinalScrapeTimeout; f > 0 && iv > f {
		why = append(why, fmt.Sprintf("a stopping worker waits %s for its final scrape", f))
		fix = append(fix, fmt.Sprintf("scrape at least every %s or raise the workers' final-scrape timeout above %s", f, iv))
	}
	if len(why) == 0 {
		return Finding{}, false
	}
	return newFinding(IDScrapeIntervalTooLong, j.sc.JobName,
		fmt.Sprintf("job %s scrapes every %s; %s", j.sc.JobName, iv, strings.Join(why, "; ")),
		"a new worker on a reused slot writes into a series Prometheus still scrapes the old worker into, and its restart is lost (measured without a hold: graceful restarts 50 % lost); a worker that stops gracefully loses what it counted since its last scrape",
		strings.Join(fix, "; ")), true
}

// createdProtocols carry created timestamps: OpenMetrics as _created
// lines, protobuf as a field. PrometheusText does not.
var createdProtocols = map[string]bool{"OpenMetricsText1.0.0": true, "OpenMetricsText0.0.1": true, "PrometheusProto": true}

func checkProtocols(j *jobCheck) (Finding, bool) {
	ps := j.sc.ScrapeProtocols
	if len(ps) == 0 {
		return Finding{}, false // Prometheus 2 before 2.49: OpenMetrics first
	}
	// A worker answers in the first protocol it serves. Go workers serve
	// all of them; the Python, Ruby and Node clients serve OpenMetrics and
	// text, so OpenMetrics must come before any text format.
	for _, p := range ps {
		if strings.HasPrefix(p, "OpenMetricsText") {
			return Finding{}, false
		}
		if strings.HasPrefix(p, "PrometheusText") {
			break
		}
	}
	return newFinding(IDScrapeProtocols, j.sc.JobName,
		fmt.Sprintf("job %s asks for %s: no OpenMetrics format before the text formats, and only OpenMetrics carries created timestamps for every client", j.sc.JobName, strings.Join(ps, ", ")),
		"workers answer in the text format, which carries no created timestamp (Python, Ruby and Node workers always; Go workers unless protobuf comes first): every restart on a reused slot where the new worker counted past the old one is missed",
		"remove scrape_protocols from the job (Prometheus 3 with created-timestamp-zero-ingestion asks for PrometheusProto, then OpenMetricsText1.0.0 first) or put OpenMetricsText1.0.0 before any PrometheusText"), true
}

// checkTargets compares the jobs' targets with the server's active ones.
// A problem becomes a finding once it has lasted longer than the server
// needs to catch up with sdwriter's output.
func (c *Checker) checkTargets(jobs []*jobCheck, active []activeTarget, r *Result) []Finding {
	byPool := map[string][]activeTarget{}
	for _, a := range active {
		byPool[a.ScrapePool] = append(byPool[a.ScrapePool], a)
	}
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	seen := map[string]time.Time{}
	// lasted says whether problem p has lasted grace, and counts it as
	// pending if not.
	lasted := func(p string, grace time.Duration) bool {
		first, ok := c.pending[p]
		if !ok {
			first = now
		}
		seen[p] = first
		if now.Sub(first) >= grace {
			return true
		}
		r.Pending++
		if at := first.Add(grace); r.ConfirmAt.IsZero() || at.Before(r.ConfirmAt) {
			r.ConfirmAt = at
		}
		return false
	}
	var fs []Finding
	for _, j := range jobs {
		name := j.sc.JobName
		grace := discoveryDelay + 2*time.Duration(j.sc.ScrapeInterval)
		served := map[string]bool{}
		for _, t := range j.targets {
			served[targetKey(t.labels)] = true
		}
		got := map[string]activeTarget{}
		var notServed []string
		for _, a := range byPool[name] {
			k := targetKey(a.DiscoveredLabels)
			got[k] = a
			if !served[k] && lasted(name+"\x00notserved\x00"+k, grace) {
				notServed = append(notServed, fmt.Sprintf("%s (job %s, instance %s)", k, a.Labels[model.JobLabel], a.Labels[model.InstanceLabel]))
			}
		}
		var missing, down []target
		var lastError string
		for _, k := range slices.Sorted(maps.Keys(j.expected)) {
			t := j.expected[k]
			a, ok := got[k]
			switch {
			case !ok:
				if lasted(name+"\x00missing\x00"+k, grace) {
					missing = append(missing, t)
				}
			case a.Health == "up":
				j.active++
				j.up++
			default:
				j.active++
				if lasted(name+"\x00down\x00"+k, grace) {
					down = append(down, t)
					if lastError == "" {
						lastError = a.LastError
					}
				}
			}
		}
		if len(missing) > 0 {
			fs = append(fs, withTargets(newFinding(IDTargetMissing, name,
				fmt.Sprintf("%d of the %d targets sdwriter serves to job %s are not among the server's active targets, for longer than %s", len(missing), len(j.expected), name, grace),
				"those workers are not scraped: their counts are missing from every total",
				"check that the server reads sdwriter's current file (its file_sd refresh, the file's permissions, the directory it watches) and its discovery log lines"), missing))
		}
		if len(down) > 0 {
			msg := fmt.Sprintf("%d of the %d targets of job %s that sdwriter serves are down, for longer than %s", len(down), len(j.expected), name, grace)
			if lastError != "" {
				msg += "; the last error: " + lastError
			}
			fs = append(fs, withTargets(newFinding(IDTargetDown, name, msg,
				"those workers are registered and alive (their registration lives) but not scraped: their counts are missing from every total",
				"let the server reach the workers' ephemeral ports (firewall, network policy), and check that each worker's address is one this server can reach (workersd-agent --advertise.host, worker.Config.AdvertiseAddress)"), down))
		}
		if len(notServed) > 0 {
			f := newFinding(IDTargetNotServed, name,
				fmt.Sprintf("job %s scrapes %d targets that sdwriter does not serve (another writer's or a stale file matched by its file_sd pattern, or another discovery in the job)", name, len(notServed)),
				"series of workers that may be dead or counted elsewhere: phantom targets, and sums that count a worker twice",
				"make the job read only sdwriter's output: narrow its file_sd pattern to sdwriter's file, remove stale files and other discoveries from the job")
			f.Count = len(notServed)
			slices.Sort(notServed)
			f.Targets = notServed[:min(len(notServed), maxExamples)]
			fs = append(fs, f)
		}
	}
	c.pending = seen
	return fs
}

func (c *Checker) forgetPending() {
	c.mu.Lock()
	defer c.mu.Unlock()
	clear(c.pending)
}

func joinLabels(ls model.LabelNames) string {
	s := make([]string, len(ls))
	for i, l := range ls {
		s[i] = string(l)
	}
	return strings.Join(s, ",")
}
