package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/alecthomas/kingpin/v2"
	"github.com/prometheus/common/version"

	"github.com/workersd/workersd/promcheck"
)

const (
	// defaultMaxWait bounds how long "sdwriter check" waits for target
	// problems that are too recent to tell to be confirmed or cleared by
	// default: one is confirmed after 10 s and two scrape intervals, 130 s
	// at Prometheus' default interval of 1m.
	defaultMaxWait = 3 * time.Minute
	// sdReadyWait bounds a request to a running sdwriter, with the wait
	// for its first listing of etcd (its /sd answers 503 until then): a
	// pipeline may check right after starting it.
	sdReadyWait = 30 * time.Second
	// maxSDAnswer bounds an answer of a running sdwriter read into memory:
	// 100,000 targets are about 20 MiB.
	maxSDAnswer = 256 << 20
)

// checkCmd is "sdwriter check": one check of the Prometheus servers that
// read sdwriter's output, for deploy pipelines.
type checkCmd struct {
	prom     promFlags
	checkers []*promcheck.Checker
	format   string
	maxWait  time.Duration

	stderrMu sync.Mutex // the servers are checked at once
	stderr   io.Writer

	// The output from files...
	outputFile string
	shards     int
	// ... or from a running sdwriter.
	sdwriterURL        string
	sdwriterHTTPConfig string
	sdwriter           *url.URL
	client             *http.Client
}

func parseCheckFlags(args []string, stderr io.Writer) (*checkCmd, error) {
	c := &checkCmd{stderr: stderr}
	app := kingpin.New(name+" check", "Checks once, through their HTTP API, that the Prometheus servers reading sdwriter's output are set up for exact totals, and prints what to fix. Reads the output from sdwriter's files (--output.file) or from a running sdwriter (--sdwriter.url); needs no etcd. Target problems too recent to tell are checked again once due, for at most --max-wait. Exits 0 when no finding is an error, 1 when one is (or the output cannot be read), 2 on bad flags.")
	app.Version(version.Print(name))
	app.HelpFlag.Short('h')
	app.UsageWriter(stderr)
	app.ErrorWriter(stderr)
	addPromFlags(app, &c.prom)
	app.Flag("output.file", "sdwriter's --output.file: read the output from its file (with --output.shards, from its shards' files). Prometheus' file_sd patterns are matched against it; for servers reading sdwriter's /sd (http_sd), use --sdwriter.url instead.").
		Default("").StringVar(&c.outputFile)
	app.Flag("output.shards", "sdwriter's --output.shards, with --output.file.").
		Default("1").IntVar(&c.shards)
	app.Flag("sdwriter.url", "URL of a running sdwriter, such as http://localhost:9850: read the output from its /sd and the files it writes from its /api/v1/status. Prometheus' file_sd patterns are matched against those files, and http_sd URLs with this URL's port against its /sd.").
		PlaceHolder("URL").Default("").StringVar(&c.sdwriterURL)
	app.Flag("sdwriter.http-config-file", "HTTP client settings for --sdwriter.url (when its --web.config.file asks for TLS or basic auth), in the format of --prometheus.http-config-file.").
		Default("").StringVar(&c.sdwriterHTTPConfig)
	app.Flag("max-wait", "How long to wait at most for target problems too recent to tell (a target problem is a finding once it has lasted 10s and two scrape intervals). 0s: report what the first look finds.").
		Default(defaultMaxWait.String()).DurationVar(&c.maxWait)
	app.Flag("format", "text: a report to read; json: the results, as sdwriter serves them at /api/v1/checks.").
		Default("text").StringVar(&c.format)
	if _, err := app.Parse(args); err != nil {
		return nil, err
	}
	if c.maxWait < 0 {
		return nil, fmt.Errorf("--max-wait=%s: want a duration such as 3m, 0s not to wait", c.maxWait)
	}
	if c.format != "text" && c.format != "json" {
		return nil, fmt.Errorf("--format=%s: want text or json", c.format)
	}
	var err error
	if c.checkers, err = c.prom.checkers(); err != nil {
		return nil, err
	}
	if len(c.checkers) == 0 {
		return nil, errors.New("--prometheus.url: give the URL of each Prometheus server to check")
	}
	switch {
	case c.outputFile == "" && c.sdwriterURL == "":
		return nil, errors.New("--output.file or --sdwriter.url: give one, where to read sdwriter's output")
	case c.outputFile != "" && c.sdwriterURL != "":
		return nil, errors.New("--output.file and --sdwriter.url: give one, not both")
	case c.shards < 1 || c.shards > maxShards:
		return nil, fmt.Errorf("--output.shards=%d: want 1 to %d", c.shards, maxShards)
	case c.sdwriterURL == "":
		if c.sdwriterHTTPConfig != "" {
			return nil, errors.New("--sdwriter.http-config-file needs --sdwriter.url")
		}
		return c, nil
	case c.shards != 1:
		return nil, errors.New("--output.shards goes with --output.file; with --sdwriter.url, sdwriter says how many shards it has")
	}
	u, err := url.Parse(c.sdwriterURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("--sdwriter.url=%s: want http:// or https:// and a host, such as http://localhost:9850", c.sdwriterURL)
	}
	c.sdwriter = u
	if c.client, err = httpClient("--sdwriter.http-config-file", c.sdwriterHTTPConfig, "sdwriter"); err != nil {
		return nil, err
	}
	return c, nil
}

// runCheck is "sdwriter check"; it returns the exit code.
func runCheck(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	c, err := parseCheckFlags(args, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "%s check: error: %v, try --help\n", name, err)
		return 2
	}
	results, err := c.run(ctx)
	if err != nil {
		fmt.Fprintf(stderr, "%s check: %v\n", name, err)
		return 1
	}
	errs := 0
	for _, r := range results {
		errs += r.Errors()
	}
	if c.format == "json" {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		enc.Encode(checksReport{Prometheus: results})
	} else {
		writeReport(stdout, results, c.maxWait)
	}
	if errs > 0 {
		return 1
	}
	return 0
}

// run checks every server at once. A server's target problems that are too
// recent to tell are checked again once due, until none is left or the
// next is due after --max-wait; its Checker keeps them meanwhile.
func (c *checkCmd) run(ctx context.Context) ([]promcheck.Result, error) {
	deadline := time.Now().Add(c.maxWait)
	out, err := c.output(ctx)
	if err != nil {
		return nil, err
	}
	results := make([]promcheck.Result, len(c.checkers))
	var wg sync.WaitGroup
	for i, ch := range c.checkers {
		wg.Go(func() {
			res := ch.Check(ctx, out)
			for res.Pending > 0 && !res.ConfirmAt.After(deadline) {
				c.warnf("%s: %s too recent to tell; checking again in %s", ch.URL(), plural(res.Pending, "target problem"), time.Until(res.ConfirmAt).Round(time.Second))
				wait := time.NewTimer(time.Until(res.ConfirmAt))
				select {
				case <-ctx.Done():
					wait.Stop()
					return
				case <-wait.C:
				}
				// Against the output as it is now: the workers that
				// stopped meanwhile are no problem.
				now, err := c.output(ctx)
				if err != nil {
					c.warnf("reading sdwriter's output again: %v; checking %s against the output read before", err, ch.URL())
					now = out
				}
				res = ch.Check(ctx, now)
			}
			results[i] = res
		})
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("interrupted before the check was complete: %w", err)
	}
	return results, nil
}

// warnf tells on stderr what the check is doing.
func (c *checkCmd) warnf(format string, args ...any) {
	c.stderrMu.Lock()
	defer c.stderrMu.Unlock()
	fmt.Fprintf(c.stderr, name+" check: "+format+"\n", args...)
}

// output reads sdwriter's output from its files or from the running
// sdwriter.
func (c *checkCmd) output(ctx context.Context) (promcheck.Output, error) {
	if c.sdwriter == nil {
		return readFiles(c.outputFile, c.shards)
	}
	return c.fetch(ctx)
}

// readFiles reads the output sdwriter writes to file in shards.
func readFiles(file string, shards int) (promcheck.Output, error) {
	paths, err := absFiles(file, shards)
	if err != nil {
		return promcheck.Output{}, fmt.Errorf("--output.file: %w", err)
	}
	out := promcheck.Output{Files: paths}
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			return promcheck.Output{}, fmt.Errorf("reading sdwriter's output (are --output.file and --output.shards sdwriter's?): %w", err)
		}
		if !json.Valid(b) {
			return promcheck.Output{}, fmt.Errorf("%s is not JSON: is it sdwriter's --output.file?", p)
		}
		out.Shards = append(out.Shards, b)
	}
	return out, nil
}

// fetch reads the output of a running sdwriter: how many shards and which
// files from its /api/v1/status, each shard from its /sd.
func (c *checkCmd) fetch(ctx context.Context) (promcheck.Output, error) {
	var st struct {
		Output outputStatus `json:"output"`
	}
	b, err := c.get(ctx, "/api/v1/status", url.Values{"limit": {"1"}})
	if err != nil {
		return promcheck.Output{}, err
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return promcheck.Output{}, fmt.Errorf("%s: /api/v1/status: not sdwriter's status: %v", c.sdwriter.Redacted(), err)
	}
	out := promcheck.Output{Files: st.Output.AbsFiles, SDPort: c.sdwriter.Port()}
	if out.SDPort == "" {
		out.SDPort = map[string]string{"http": "80", "https": "443"}[c.sdwriter.Scheme]
	}
	// An sdwriter that does not say is older than this one: its /sd
	// answers, or says in its 400 how many shards there are.
	n := max(st.Output.Shards, 1)
	for k := range n {
		var q url.Values
		if n > 1 {
			q = url.Values{"shard": {strconv.Itoa(k)}}
		}
		b, err := c.get(ctx, "/sd", q)
		if err != nil {
			return promcheck.Output{}, err
		}
		out.Shards = append(out.Shards, b)
	}
	return out, nil
}

// get asks the running sdwriter for path, waiting out its 503 until its
// first listing of etcd is done.
func (c *checkCmd) get(ctx context.Context, path string, q url.Values) ([]byte, error) {
	u := c.sdwriter.JoinPath(path)
	u.RawQuery = q.Encode()
	ctx, cancel := context.WithTimeout(ctx, sdReadyWait)
	defer cancel()
	fail := func(format string, args ...any) error {
		return fmt.Errorf("sdwriter at %s: GET %s: %s", c.sdwriter.Redacted(), u.RequestURI(), fmt.Sprintf(format, args...))
	}
	for {
		b, code, err := c.getOnce(ctx, u)
		switch {
		case err != nil:
			return nil, fail("%v", err)
		case code == http.StatusOK:
			return b, nil
		case code != http.StatusServiceUnavailable:
			return nil, fail("%d %s: %s", code, http.StatusText(code), excerpt(b))
		}
		select {
		case <-ctx.Done():
			return nil, fail("still %d %s after %s: %s", code, http.StatusText(code), sdReadyWait, excerpt(b))
		case <-time.After(time.Second):
		}
	}
}

func (c *checkCmd) getOnce(ctx context.Context, u *url.URL) ([]byte, int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, 0, err
	}
	resp, err := c.client.Do(req)
	if err != nil {
		return nil, 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxSDAnswer+1))
	if err != nil {
		return nil, 0, err
	}
	if len(b) > maxSDAnswer {
		return nil, 0, fmt.Errorf("the answer is larger than %d MiB", maxSDAnswer>>20)
	}
	return b, resp.StatusCode, nil
}

func excerpt(b []byte) string { return strings.TrimSpace(string(b[:min(len(b), 200)])) }

// writeReport prints results for a reader: each server, the jobs that
// read the output, each finding with its cost and fix, and a last line
// that sums up.
func writeReport(w io.Writer, results []promcheck.Result, maxWait time.Duration) {
	errs, warnings := 0, 0
	for _, r := range results {
		v := r.Version
		if v == "" {
			v = "version unknown"
		}
		fmt.Fprintf(w, "Prometheus %s (%s), checked in %s\n", r.URL, v, r.Took.Round(time.Millisecond))
		for _, j := range r.Jobs {
			protocols := "default"
			if len(j.Protocols) > 0 {
				protocols = strings.Join(j.Protocols, ", ")
			}
			shards := make([]string, len(j.Shards))
			for i, k := range j.Shards {
				shards[i] = strconv.Itoa(k)
			}
			of := "shard"
			if len(shards) > 1 {
				of = "shards"
			}
			fmt.Fprintf(w, "  job %s reads %s (%s %s): every %s, timeout %s, protocols %s; keeps %s; %s, %d active, %d up\n",
				j.Name, strings.Join(j.Reads, ", "), of, strings.Join(shards, ", "),
				j.ScrapeInterval, j.ScrapeTimeout, protocols, j.Keeps, plural(j.Targets, "target"), j.Active, j.Up)
		}
		for _, f := range r.Findings {
			if f.Severity == promcheck.Error {
				errs++
			} else {
				warnings++
			}
			job := ""
			if f.Job != "" {
				job = " (job " + f.Job + ")"
			}
			fmt.Fprintf(w, "  %s %s%s: %s\n", f.Severity, f.ID, job, f.Message)
			if f.Cost != "" {
				fmt.Fprintf(w, "    cost: %s\n", f.Cost)
			}
			fmt.Fprintf(w, "    fix:  %s\n", f.Fix)
			if len(f.Targets) > 0 {
				more := ""
				if f.Count > len(f.Targets) {
					more = fmt.Sprintf(" and %d more", f.Count-len(f.Targets))
				}
				fmt.Fprintf(w, "    targets: %s%s\n", strings.Join(f.Targets, "; "), more)
			}
		}
		if len(r.Findings) == 0 {
			fmt.Fprintln(w, "  no findings")
		}
		if r.Pending > 0 {
			fmt.Fprintf(w, "  %s still too recent to tell: due at %s, after --max-wait=%s (check again then)\n",
				plural(r.Pending, "target problem"), r.ConfirmAt.UTC().Format(time.RFC3339), maxWait)
		}
		fmt.Fprintln(w)
	}
	servers := plural(len(results), "Prometheus server")
	if errs > 0 {
		fmt.Fprintf(w, "%s check: %s, %s on %s: not set up for exact totals\n", name, plural(errs, "error"), plural(warnings, "warning"), servers)
		return
	}
	fmt.Fprintf(w, "%s check: no errors, %s on %s\n", name, plural(warnings, "warning"), servers)
}

// plural is "1 error", "2 errors".
func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}
