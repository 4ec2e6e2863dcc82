//go:build linux

package integration

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/workersd/workersd/internal/testing/etcdtest"
	"github.com/workersd/workersd/internal/testing/poll"
)

// Every workersd_* metric a running sdwriter, agent (with a registered
// worker, so its registrar metrics exist) and demo worker expose has a line
// in docs/METRICS.md: a metric added without one fails here.
func TestMetricsAreDocumented(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the binaries")
	}
	bin := binaries(t)
	doc, err := os.ReadFile(filepath.Join("..", "docs", "METRICS.md"))
	if err != nil {
		t.Fatal(err)
	}
	documented := map[string]bool{}
	for _, m := range regexp.MustCompile("`(workersd_[a-z_]+)`").FindAllStringSubmatch(string(doc), -1) {
		documented[m[1]] = true
	}

	etcd := etcdtest.Start(t)
	dir := t.TempDir()
	logs := filepath.Join(dir, "logs")
	if err := os.Mkdir(logs, 0o755); err != nil {
		t.Fatal(err)
	}
	sdw, agentWeb := etcdtest.FreeAddr(t), etcdtest.FreeAddr(t)
	startProc(t, logs, "sdwriter", filepath.Join(bin, "sdwriter"), "--etcd.endpoints="+etcd.Endpoint(),
		"--output.file="+filepath.Join(dir, "targets.json"), "--web.listen-address="+sdw)
	sock := filepath.Join(dir, "agent.sock")
	startProc(t, logs, "agent", filepath.Join(bin, "workersd-agent"), "--etcd.endpoints="+etcd.Endpoint(), "--host=h",
		"--listen.socket="+sock, "--state.file="+filepath.Join(dir, "agent.json"), "--web.listen-address="+agentWeb)
	w := startProc(t, logs, "worker", filepath.Join(bin, "demoworker"), "--etcd.endpoints="+etcd.Endpoint(),
		"--job=m", "--host=h", "--listen-address=127.0.0.1:0", "--final-scrape-timeout=0s")
	workerAddr, err := w.waitLine("listening on", 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	child := exec.Command("sleep", "300")
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { child.Process.Kill(); child.Wait() })
	unix := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		},
	}}
	poll.Until(t, 30*time.Second, func() bool {
		resp, err := unix.Post("http://agent/v1/workers", "application/json",
			strings.NewReader(fmt.Sprintf(`{"job":"m","port":9999,"pid":%d}`, child.Process.Pid)))
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 201
	}, "the agent did not register a worker")

	for part, addr := range map[string]string{"sdwriter": sdw, "agent": agentWeb, "demo worker": workerAddr} {
		var names []string
		poll.Until(t, 30*time.Second, func() bool {
			names = workersdMetrics(addr)
			return len(names) > 0
		}, "%s exposes no workersd_* metric on %s", part, addr)
		for _, n := range names {
			if !documented[n] {
				t.Errorf("%s exposes %s, which docs/METRICS.md does not list", part, n)
			}
		}
		t.Logf("%s: %d workersd_* metrics, all documented", part, len(names))
	}
}

// workersdMetrics lists the workersd_* metric families served at addr.
func workersdMetrics(addr string) []string {
	resp, err := httpClient.Get("http://" + addr + "/metrics")
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	var names []string
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) >= 3 && f[0] == "#" && f[1] == "TYPE" && strings.HasPrefix(f[2], "workersd_") {
			names = append(names, f[2])
		}
	}
	return names
}
