package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// GoRun is one `go test` of the main module, run from the repository root,
// and its output.
type GoRun struct {
	ID      string  `json:"id"`
	Env     string  `json:"env,omitempty"`
	Args    string  `json:"args"`
	Output  string  `json:"output"`
	Seconds float64 `json:"seconds"`
	Err     string  `json:"err,omitempty"`
}

// Cmd is the command line to paste into a shell at the repository root.
func (r GoRun) Cmd() string {
	if r.Env != "" {
		return r.Env + " go test " + r.Args
	}
	return "go test " + r.Args
}

// goRuns are the main module's benchmarks and timing tests the report
// copies, in the order they run.
var goRuns = []GoRun{
	{ID: "register", Args: "-run '^$' -bench RegisterToVisible -benchtime 200x ./registrar"},
	{ID: "keepalive", Args: "-run '^$' -bench KeepAliveLoad -benchtime 1x ./registrar"},
	{ID: "killed", Args: "-run '^TestKilledProcessDisappearsWithinTTL$' -count 1 -v ./registrar"},
	{ID: "survives", Args: "-run '^(TestSurvivesEtcdRestartAndWipe|TestBackAfterExternalRevokeOrDelete)$' -count 1 -v ./registrar"},
	{ID: "regfile", Args: "-run '^$' -bench RegistrationToFile -benchtime 1000x ./cmd/sdwriter"},
	{ID: "sync", Args: "-run '^$' -bench 'InitialSync|SdwriterRSS' -benchtime 1x ./cmd/sdwriter"},
	{ID: "render", Args: "-run '^$' -bench . -benchtime 3s ./etcdsd ./sdfile"},
	{ID: "statuspage", Args: "-run '^$' -bench StatusPage -benchtime 20x ./cmd/sdwriter"},
	{ID: "churn", Env: "SDWRITER_CHURN_SECONDS=30", Args: "-run '^$' -bench Churn -benchtime 1x ./cmd/sdwriter"},
	{ID: "workerstart", Args: "-run '^$' -bench 'StartToRegistered|MetricsLatency' -benchtime 3s ./worker"},
	{ID: "workerrss", Args: "-run '^$' -bench RSS -benchtime 1x ./worker"},
	{ID: "agentexit", Args: "-run '^$' -bench ExitToRemoval -benchtime 100x ./agent"},
	{ID: "agentapi", Args: "-run '^$' -bench RegisterDeregister -benchtime 100x ./agent"},
	{ID: "keepalives", Args: "-run '^$' -bench KeepAlives -benchtime 1x ./agent"},
}

// runGoTests runs each command through the shell (so the quoting shown in
// the report is the quoting used) from repo.
func runGoTests(ctx context.Context, repo string, only map[string]bool, log func(string, ...any)) []GoRun {
	var out []GoRun
	for _, r := range goRuns {
		if len(only) > 0 && !only[r.ID] {
			continue
		}
		t0 := time.Now()
		cmd := exec.CommandContext(ctx, "bash", "-c", r.Cmd())
		cmd.Dir = repo
		cmd.Env = append(os.Environ(), "CI=") // benchmarks, not the CI suite
		b, err := cmd.CombinedOutput()
		r.Output, r.Seconds = string(b), time.Since(t0).Seconds()
		if err != nil {
			r.Err = err.Error()
			log("%s: %v\n%s", r.Cmd(), err, lastLines(r.Output, 15))
		} else {
			log("%s: %.0f s", r.Cmd(), r.Seconds)
		}
		out = append(out, r)
	}
	return out
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// benchLines parses benchmark result lines: name (without the -GOMAXPROCS
// suffix) -> unit -> value. A benchmark that appears several times keeps
// every value, in order.
func benchLines(out string) map[string]map[string][]float64 {
	res := map[string]map[string][]float64{}
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 4 || !strings.HasPrefix(f[0], "Benchmark") {
			continue
		}
		if _, err := strconv.Atoi(f[1]); err != nil {
			continue
		}
		name := f[0]
		if i := strings.LastIndex(name, "-"); i > 0 {
			if _, err := strconv.Atoi(name[i+1:]); err == nil {
				name = name[:i]
			}
		}
		m := res[name]
		if m == nil {
			m = map[string][]float64{}
			res[name] = m
		}
		for i := 2; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				continue
			}
			m[f[i+1]] = append(m[f[i+1]], v)
		}
	}
	return res
}

// logged finds the first submatch of re in out.
func logged(out, re string) []string {
	return regexp.MustCompile(re).FindStringSubmatch(out)
}

// durationMs parses a Go duration as printed by %s.
func durationMs(s string) float64 {
	d, err := time.ParseDuration(s)
	if err != nil {
		return -1
	}
	return ms(d)
}

var _ = fmt.Sprint
