//go:build linux

package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/workersd/workersd/internal/testing/poll"
)

// agentStopBound is what the agent allows itself between SIGTERM and its
// exit (cmd/workersd-agent's shutdownTimeout), plus the process' own exit.
const agentStopBound = 6 * time.Second

// Issue 21, acceptance 3: SIGTERM to the agent with its etcd paused
// (SIGSTOP: every call waits, none fails) ends the agent within its bound
// whatever the TTL, where it used to take the TTL; and a restarted agent
// does not bring back a worker whose DELETE it had accepted, but finishes
// removing it once etcd answers.
func TestAgentStopsInBoundWithEtcdPaused(t *testing.T) {
	endToEnd(t)
	for _, ttl := range []time.Duration{10 * time.Second, 20 * time.Second} {
		t.Run(ttl.String(), func(t *testing.T) { agentStopWithEtcdPaused(t, ttl) })
	}
}

func agentStopWithEtcdPaused(t *testing.T, ttl time.Duration) {
	dir := t.TempDir()
	e := &env{t: t, dir: dir, logs: filepath.Join(dir, "logs")}
	if err := os.MkdirAll(e.logs, 0o755); err != nil {
		t.Fatal(err)
	}
	c := startCluster(e, 1)
	etcd := c.members[0]
	cli := c.clientAs("", "")
	sock := filepath.Join(dir, "agent.sock")
	args := []string{"--etcd.endpoints=" + etcd.client, "--host=h", "--ttl=" + ttl.String(),
		"--listen.socket=" + sock, "--state.file=" + filepath.Join(dir, "agent.json")}
	agent := startProc(t, e.logs, "agent", filepath.Join(binDir, "workersd-agent"), args...)
	api := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		},
	}}
	call := func(method, path, body string) (int, map[string]any, error) {
		req, _ := http.NewRequest(method, "http://agent"+path, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		resp, err := api.Do(req)
		if err != nil {
			return 0, nil, err
		}
		defer resp.Body.Close()
		out := map[string]any{}
		json.NewDecoder(resp.Body).Decode(&out)
		return resp.StatusCode, out, nil
	}
	worker := exec.Command("sleep", "300")
	if err := worker.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { worker.Process.Kill(); worker.Wait() })
	poll.Until(t, 30*time.Second, func() bool {
		code, _, err := call("POST", "/v1/workers", fmt.Sprintf(`{"job":"stop","port":9999,"pid":%d}`, worker.Process.Pid))
		return err == nil && (code == 201 || code == 200)
	}, "the worker did not register")
	keys := func() (int64, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		resp, err := cli.Get(ctx, prefix+"stop/", clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err != nil {
			return 0, err
		}
		return resp.Count, nil
	}
	poll.Until(t, 15*time.Second, func() bool { n, err := keys(); return err == nil && n == 1 }, "the worker's key is not in etcd")

	etcd.p.signal(syscall.SIGSTOP)
	paused := true
	t.Cleanup(func() {
		if paused {
			etcd.p.signal(syscall.SIGCONT)
		}
	})
	code, body, err := call("DELETE", fmt.Sprintf("/v1/workers/%d", worker.Process.Pid), "")
	if err != nil || code != http.StatusAccepted || body["state"] != "removal_pending" {
		t.Fatalf("DELETE with etcd paused: %d %v %v; want 202 removal_pending", code, body, err)
	}
	start := time.Now()
	if err := agent.terminate(agentStopBound); err != nil {
		t.Fatalf("SIGTERM with etcd paused (TTL %s): %v", ttl, err)
	}
	took := time.Since(start)
	t.Logf("SIGTERM to exit with etcd paused, TTL %s: %s", ttl, took.Round(time.Millisecond))

	etcd.p.signal(syscall.SIGCONT)
	paused = false
	startProc(t, e.logs, "agent-restarted", filepath.Join(binDir, "workersd-agent"), args...)
	var list map[string]any
	poll.Until(t, 30*time.Second, func() bool {
		code, out, err := call("GET", "/v1/workers", "")
		list = out
		return err == nil && code == 200
	}, "the restarted agent does not answer")
	if ws, _ := list["workers"].([]any); len(ws) != 0 {
		t.Fatalf("the restarted agent brought back %v, whose DELETE was accepted", ws)
	}
	poll.Until(t, 2*ttl, func() bool { n, err := keys(); return err == nil && n == 0 },
		"the restarted agent did not finish the pending removal")
}
