//go:build linux

package integration

import (
	"bufio"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/workersd/workersd/internal/testing/buildtest"
	"github.com/workersd/workersd/internal/testing/poll"
	"github.com/workersd/workersd/internal/testing/promtest"
)

// The README's "Using it", followed word for word (issue 10): sdwriter run
// with the command the README shows (its documented output path, the
// embedded etcd on its default ports), Prometheus with examples/prometheus.yml
// copied unchanged, and three workers as the README's Go snippet starts
// them (the demo worker with job "api" and every other default). Prometheus
// must scrape every worker. The documented path is a system path: sdwriter
// and Prometheus run in a mount namespace of their own with a tmpfs over
// /var/lib, so the test writes nothing outside its temporary directory.
func TestReadmeUsingItWordForWord(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the binaries")
	}
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("needs root for a mount namespace, which CI has")
		}
		t.Skip("needs root for a mount namespace")
	}
	unshare := buildtest.RequireTool(t, "unshare", "Debian's util-linux")
	prom := buildtest.RequirePrometheus3(t)
	bin := binaries(t)

	readme, err := os.ReadFile(filepath.Join("..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	var sdwriterCmd string
	sc := bufio.NewScanner(strings.NewReader(string(readme)))
	for sc.Scan() {
		if line := sc.Text(); strings.HasPrefix(line, "sdwriter --output.file=/") {
			sdwriterCmd, _, _ = strings.Cut(line, "#")
			break
		}
	}
	if sdwriterCmd = strings.TrimSpace(sdwriterCmd); sdwriterCmd == "" {
		t.Fatal("README.md shows no `sdwriter --output.file=/...` command")
	}
	t.Logf("README: %s", sdwriterCmd)

	dir := t.TempDir()
	logs := filepath.Join(dir, "logs")
	cfgDir := filepath.Join(dir, "etc")
	for _, d := range []string{logs, cfgDir} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range []string{"prometheus.yml", "rules.yml"} {
		b, err := os.ReadFile(filepath.Join("..", "examples", f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(cfgDir, f), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// The README's command, with sdwriter found where the suite built it,
	// and Prometheus run as README recommends.
	script := fmt.Sprintf(`set -e
mount -t tmpfs workersd-test /var/lib
cd %q
PATH=%q:$PATH %s &
exec %q --config.file=%q --storage.tsdb.path=%q --enable-feature=created-timestamp-zero-ingestion
`, dir, bin, sdwriterCmd, prom, filepath.Join(cfgDir, "prometheus.yml"), filepath.Join(dir, "tsdb"))
	startProc(t, logs, "sdwriter-and-prometheus", unshare, "--mount", "--propagation", "private", "sh", "-c", script)
	poll.Until(t, 60*time.Second, func() bool {
		resp, err := http.Get("http://127.0.0.1:9090/-/ready")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	}, "Prometheus on its default port :9090 is not ready")

	var addrs []string
	for i := range 3 {
		w := startProc(t, logs, fmt.Sprintf("worker-%d", i), filepath.Join(bin, "demoworker"), "--job=api")
		addr, err := w.waitLine("listening on", 30*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		addrs = append(addrs, addr)
	}
	// The example scrapes every 10s: discovery, then a scrape of each.
	var up map[string]string
	took := poll.Until(t, 90*time.Second, func() bool {
		var data struct {
			Active []struct {
				ScrapeURL string            `json:"scrapeUrl"`
				Labels    map[string]string `json:"labels"`
				Health    string            `json:"health"`
			} `json:"activeTargets"`
		}
		if err := promtest.API("http://127.0.0.1:9090", "/api/v1/targets", nil, &data); err != nil {
			return false
		}
		up = map[string]string{}
		for _, a := range data.Active {
			if a.Labels["job"] == "api" {
				up[a.ScrapeURL] = a.Health
			}
		}
		// Each at the metrics path of its own it registered.
		scraped := 0
		for _, addr := range addrs {
			for url, health := range up {
				if strings.HasPrefix(url, "http://"+addr+"/metrics/") && health == "up" {
					scraped++
				}
			}
		}
		return scraped == len(addrs)
	}, "Prometheus does not scrape every worker")
	t.Logf("Prometheus scrapes the 3 workers %s after they started", took.Round(time.Second))
	if err := exec.Command("grep", "-q", "workersd-test", "/proc/self/mountinfo").Run(); err == nil {
		t.Error("the test's tmpfs is visible outside its mount namespace")
	}
}
