package main

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/workersd/workersd/internal/testing/etcdtest"
	"github.com/workersd/workersd/internal/testing/poll"
)

// Issue 15, acceptance 4: `workersd-agent list` against a running agent
// prints its live workers, one line each with pid, job, slot, state,
// lease and how the process is watched, and no longer the one that exited.
func TestList(t *testing.T) {
	etcd := etcdtest.Start(t)
	dir := t.TempDir()
	sock := filepath.Join(dir, "agent.sock")
	start(t, "--etcd.endpoints="+etcd.Endpoint(), "--host=web-1", "--ttl=2s", "--slot-hold=0s",
		"--listen.socket="+sock, "--state.file="+filepath.Join(dir, "agent.json"))
	var pids []int
	for i, job := range []string{"api", "api", "batch"} {
		child := exec.Command("sleep", "300")
		if err := child.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { child.Process.Kill(); child.Wait() })
		pids = append(pids, child.Process.Pid)
		code, w := post(t, unixClient(sock), fmt.Sprintf(`{"job":%q,"port":%d,"pid":%d}`, job, 40301+i, child.Process.Pid))
		if code != 201 || w["state"] != "registered" {
			t.Fatalf("register: %d %v", code, w)
		}
		if i == 1 {
			// The second api worker exits: the agent drops it at once.
			child.Process.Kill()
			child.Wait()
		}
	}

	var out string
	poll.Until(t, 10*time.Second, func() bool {
		var stdout, stderr bytes.Buffer
		if code := list(context.Background(), []string{"--listen.socket=" + sock}, &stdout, &stderr); code != 0 {
			t.Fatalf("list exited %d: %s", code, stderr.String())
		}
		out = stdout.String()
		return strings.HasSuffix(out, "2 workers\n")
	}, "list showing the 2 live workers, not the exited one: %s", poll.Latest(&out))
	t.Logf("workersd-agent list:\n%s", out)

	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if len(lines) != 4 || !regexp.MustCompile(`^PID\s+JOB\s+SLOT\s+STATE\s+ADDRESS\s+LEASE\s+WATCH\s+UPTIME\s+KEY$`).MatchString(lines[0]) {
		t.Fatalf("want a header, 2 workers and a count:\n%s", out)
	}
	for i, want := range []struct {
		pid       int
		job, slot string
	}{{pids[0], "api", "0"}, {pids[2], "batch", "0"}} {
		f := strings.Fields(lines[1+i])
		if len(f) != 9 || f[0] != fmt.Sprint(want.pid) || f[1] != want.job || f[2] != want.slot || f[3] != "registered" ||
			!regexp.MustCompile(`^[0-9a-f]+$`).MatchString(f[5]) || (f[6] != "pidfd" && f[6] != "poll") ||
			f[8] != fmt.Sprintf("/workersd/v1/%s/web-1/%s", want.job, want.slot) {
			t.Errorf("line %d: %q, want pid %d, job %s, slot %s, registered, a lease, a watch and the key", 1+i, lines[1+i], want.pid, want.job, want.slot)
		}
	}
	if strings.Contains(out, fmt.Sprint(pids[1])) {
		t.Errorf("the exited worker %d is listed:\n%s", pids[1], out)
	}

	var stdout, stderr bytes.Buffer
	if code := list(context.Background(), []string{"--listen.socket=" + filepath.Join(dir, "none.sock"), "--timeout=1s"}, &stdout, &stderr); code != 1 ||
		!strings.Contains(stderr.String(), "none.sock") {
		t.Errorf("list without an agent: exit %d, %q; want 1 naming the socket", code, stderr.String())
	}
	if code := list(context.Background(), []string{"--no-such-flag"}, &stdout, &stderr); code != 2 {
		t.Errorf("list with a bad flag: exit %d, want 2", code)
	}
}
