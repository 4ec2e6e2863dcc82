package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/discovery/targetgroup"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/workersd/workersd/internal/testing/etcdtest"
	"github.com/workersd/workersd/internal/testing/logtest"
	"github.com/workersd/workersd/internal/testing/poll"
	"github.com/workersd/workersd/registrar"
)

const prefix = registrar.DefaultPrefix

// instance is one sdwriter running in this process (run, as main calls it).
type instance struct {
	web, file string
	cancel    context.CancelFunc
	exit      chan int
	log       *logBuffer // what it logged
}

// startSdwriter runs sdwriter with args plus a free web address and, unless
// file is "", --output.file=file. It returns once /-/ready answers 200.
func startSdwriter(t *testing.T, file string, args ...string) *instance {
	t.Helper()
	in := &instance{web: etcdtest.FreeAddr(t), file: file, exit: make(chan int, 1), log: &logBuffer{}}
	args = append([]string{"--web.listen-address=" + in.web, "--log.level=debug", "--output.file=" + file}, args...)
	ctx, cancel := context.WithCancel(context.Background())
	in.cancel = cancel
	go func() { in.exit <- run(ctx, args, testLog{t, in.log}) }()
	t.Cleanup(func() {
		cancel()
		select {
		case code := <-in.exit:
			if code != 0 {
				t.Errorf("sdwriter exited with %d", code)
			}
		case <-time.After(30 * time.Second):
			t.Error("sdwriter did not stop")
		}
	})
	poll.Until(t, 30*time.Second, func() bool {
		code, _, _ := httpGet("http://" + in.web + "/-/ready")
		return code == http.StatusOK
	}, "sdwriter ready")
	return in
}

// testLog writes sdwriter's log to the test's and to buf.
type testLog struct {
	t   *testing.T
	buf *logBuffer
}

func (l testLog) Write(p []byte) (int, error) {
	l.t.Log(strings.TrimSuffix(string(p), "\n"))
	return l.buf.Write(p)
}

type logBuffer struct{ logtest.Buffer }

var client = &http.Client{Timeout: 5 * time.Second}

func httpGet(url string) (code int, contentType string, body []byte) {
	resp, err := client.Get(url)
	if err != nil {
		return 0, "", nil
	}
	defer resp.Body.Close()
	body, _ = io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header.Get("Content-Type"), body
}

// sd returns what /sd serves, failing unless it is 200 application/json.
func (in *instance) sd(t *testing.T) []byte {
	t.Helper()
	code, ct, body := httpGet("http://" + in.web + "/sd")
	if code != http.StatusOK || ct != "application/json" {
		t.Fatalf("/sd: %d %q", code, ct)
	}
	return body
}

// metric sums the samples of name whose labels include match.
// ownSeries counts the workersd_* series sdwriter serves.
func (in *instance) ownSeries(t *testing.T) int {
	t.Helper()
	code, _, body := httpGet("http://" + in.web + "/metrics")
	if code != http.StatusOK {
		t.Fatalf("/metrics: %d", code)
	}
	n := 0
	for line := range strings.SplitSeq(string(body), "\n") {
		if strings.HasPrefix(line, "workersd_") {
			n++
		}
	}
	return n
}

func (in *instance) metric(t *testing.T, name string, match ...string) float64 {
	t.Helper()
	code, _, body := httpGet("http://" + in.web + "/metrics")
	if code != http.StatusOK {
		t.Fatalf("/metrics: %d", code)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := parser.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	mf, ok := mfs[name]
	if !ok {
		t.Fatalf("no metric %s", name)
	}
metrics:
	for _, m := range mf.GetMetric() {
		for i := 0; i+1 < len(match); i += 2 {
			found := false
			for _, lp := range m.GetLabel() {
				found = found || (lp.GetName() == match[i] && lp.GetValue() == match[i+1])
			}
			if !found {
				continue metrics
			}
		}
		switch {
		case m.Counter != nil:
			sum += m.GetCounter().GetValue()
		case m.Gauge != nil:
			sum += m.GetGauge().GetValue()
		case m.Histogram != nil:
			sum += float64(m.GetHistogram().GetSampleCount())
		}
	}
	return sum
}

// parseTargets reads file_sd / http_sd JSON the way Prometheus' file_sd and
// http_sd readers do.
func parseTargets(b []byte) ([]*targetgroup.Group, error) {
	var groups []*targetgroup.Group
	if err := json.Unmarshal(b, &groups); err != nil {
		return nil, err
	}
	for i, g := range groups {
		if g == nil {
			return nil, fmt.Errorf("group %d is null", i)
		}
	}
	return groups, nil
}

// addresses returns the target addresses in b.
func addresses(t *testing.T, b []byte) []string {
	t.Helper()
	groups, err := parseTargets(b)
	if err != nil {
		t.Fatalf("invalid targets: %v\n%s", err, b)
	}
	var out []string
	for _, g := range groups {
		for _, tg := range g.Targets {
			out = append(out, string(tg[model.AddressLabel]))
		}
	}
	return out
}

// registrations returns the set of "<job>/<instance>" (the key without
// its prefix) of the targets in b.
func registrations(t *testing.T, b []byte) map[string]bool {
	t.Helper()
	groups, err := parseTargets(b)
	if err != nil {
		t.Fatalf("invalid targets: %v\n%s", err, b)
	}
	out := map[string]bool{}
	for _, g := range groups {
		out[string(g.Labels[model.JobLabel]+"/"+g.Labels[model.InstanceLabel])] = true
	}
	return out
}

// waitFile waits until the file holds exactly the given addresses (in
// order: the output is sorted by key).
func waitFile(t *testing.T, path string, want ...string) []byte {
	t.Helper()
	var last []byte
	poll.Until(t, 30*time.Second, func() bool {
		b, err := os.ReadFile(path)
		if err != nil {
			return false
		}
		last = b
		groups, err := parseTargets(b)
		if err != nil {
			return false
		}
		var got []string
		for _, g := range groups {
			for _, tg := range g.Targets {
				got = append(got, string(tg[model.AddressLabel]))
			}
		}
		return fmt.Sprint(got) == fmt.Sprint(want)
	}, "%s holding %v", path, want)
	return last
}

// fileWatch reads a file every few milliseconds and records every violation
// of "a valid target list that holds these addresses": the file must never
// be missing, invalid, empty or without a target that never left etcd.
type fileWatch struct {
	stop     chan struct{}
	done     chan struct{}
	mu       sync.Mutex
	reads    int
	problems []string
}

func watchFile(path string, mustHave ...string) *fileWatch {
	w := &fileWatch{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		for {
			select {
			case <-w.stop:
				return
			case <-time.After(2 * time.Millisecond):
			}
			b, err := os.ReadFile(path)
			problem := ""
			if err != nil {
				problem = err.Error()
			} else if groups, err := parseTargets(b); err != nil {
				problem = fmt.Sprintf("invalid: %v", err)
			} else {
				have := map[string]bool{}
				for _, g := range groups {
					for _, tg := range g.Targets {
						have[string(tg[model.AddressLabel])] = true
					}
				}
				for _, a := range mustHave {
					if !have[a] {
						problem = fmt.Sprintf("%s missing from %s", a, b)
					}
				}
			}
			w.mu.Lock()
			w.reads++
			if problem != "" && len(w.problems) < 5 {
				w.problems = append(w.problems, problem)
			}
			w.mu.Unlock()
		}
	}()
	return w
}

// check stops the watch and fails the test on any violation.
func (w *fileWatch) check(t *testing.T) {
	t.Helper()
	close(w.stop)
	<-w.done
	if len(w.problems) > 0 {
		t.Errorf("the file was not a complete target list at some point (%d reads): %v", w.reads, w.problems)
	}
	t.Logf("file read %d times, always complete", w.reads)
}

func put(t *testing.T, cli *clientv3.Client, key, value string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := cli.Put(ctx, key, value); err != nil {
		t.Fatal(err)
	}
}

func putReg(t *testing.T, cli *clientv3.Client, key, address string) {
	t.Helper()
	b, err := registrar.Value{Address: address}.Encode()
	if err != nil {
		t.Fatal(err)
	}
	put(t, cli, prefix+key, string(b))
}

func del(t *testing.T, cli *clientv3.Client, key string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := cli.Delete(ctx, prefix+key); err != nil {
		t.Fatal(err)
	}
}

// promtoolCheck runs `promtool check config` on a configuration whose
// file_sd job reads file. Without promtool the test is skipped, unless CI
// is set: then it fails.
func promtoolCheck(t *testing.T, file string) (ok bool, output string) {
	t.Helper()
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("promtool is not installed (Debian package prometheus); CI must run this check")
		}
		t.Skip("promtool is not installed (Debian package prometheus)")
	}
	cfg := filepath.Join(t.TempDir(), "prometheus.yml")
	conf := fmt.Sprintf("scrape_configs:\n  - job_name: workersd\n    file_sd_configs:\n      - files: [%q]\n", file)
	if err := os.WriteFile(cfg, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(promtool, "check", "config", cfg).CombinedOutput()
	return err == nil, string(out)
}

// proxy forwards TCP connections to target until paused: then it drops
// every connection and refuses new ones, as a network partition between
// sdwriter and etcd would.
type proxy struct {
	ln     net.Listener
	target string

	mu     sync.Mutex
	paused bool
	conns  map[net.Conn]struct{}
}

func startProxy(t *testing.T, target string) *proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{ln: ln, target: target, conns: map[net.Conn]struct{}{}}
	go p.accept()
	t.Cleanup(func() {
		ln.Close()
		p.pause()
	})
	return p
}

func (p *proxy) addr() string { return p.ln.Addr().String() }

func (p *proxy) accept() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		up, err := net.Dial("tcp", p.target)
		p.mu.Lock()
		if err != nil || p.paused {
			p.mu.Unlock()
			c.Close()
			if up != nil {
				up.Close()
			}
			continue
		}
		p.conns[c], p.conns[up] = struct{}{}, struct{}{}
		p.mu.Unlock()
		go func() { io.Copy(up, c); up.Close() }()
		go func() { io.Copy(c, up); c.Close() }()
	}
}

func (p *proxy) pause() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.paused = true
	for c := range p.conns {
		c.Close()
	}
	clear(p.conns)
}

func (p *proxy) resume() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.paused = false
}
