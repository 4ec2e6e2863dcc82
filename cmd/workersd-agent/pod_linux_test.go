package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/workersd/workersd/internal/testing/buildtest"
	"github.com/workersd/workersd/internal/testing/poll"
)

// The agent started as pid 1 of a PID namespace of its own, as a sidecar
// of a pod without shareProcessNamespace is, refuses to start and says what
// to set; the same agent as pid 2 of such a namespace starts.
func TestRefusesPID1(t *testing.T) {
	buildtest.RequireRoot(t, "a PID namespace")
	unshare := buildtest.RequireTool(t, "unshare", "apt-get install util-linux")
	dir := t.TempDir()
	if err := buildtest.Build(dir, "./cmd/workersd-agent"); err != nil {
		t.Fatal(err)
	}
	agent := filepath.Join(dir, "workersd-agent")
	args := []string{"--etcd.endpoints=127.0.0.1:1", "--listen.socket=" + filepath.Join(dir, "agent.sock"), "--state.file="}

	cmd := exec.Command(unshare, append([]string{"--pid", "--fork", "--kill-child", agent}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err := cmd.Run()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 2 {
		t.Fatalf("as pid 1: %v, want exit code 2; stderr:\n%s", err, &stderr)
	}
	for _, want := range []string{"pid 1", "shareProcessNamespace: true", "--pid=container:"} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("as pid 1, stderr does not say %q:\n%s", want, &stderr)
		}
	}

	// As pid 2 (a shell is pid 1), it starts: the API socket appears.
	cmd = exec.Command(unshare, "--pid", "--fork", "--kill-child", "/bin/sh", "-c", `"$0" "$@"; true`, agent)
	cmd.Args = append(cmd.Args, args...)
	var logs syncBuffer // read while the agent writes
	cmd.Stderr = &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Kill() // unshare --kill-child takes the namespace with it
		<-done
	})
	poll.Until(t, 20*time.Second, func() bool {
		select {
		case err := <-done:
			done <- err
			t.Fatalf("as pid 2 the agent exited: %v\n%s", err, &logs)
		default:
		}
		_, err := os.Stat(filepath.Join(dir, "agent.sock"))
		return err == nil
	}, "as pid 2 the agent's socket did not appear:\n%s", &logs)

	// A caller the agent cannot see (this test, outside the agent's PID
	// namespace: SO_PEERCRED says pid 0) is refused, with what to set;
	// its pids are not the agent's, even where /proc is the host's.
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", filepath.Join(dir, "agent.sock"))
		},
	}}
	body := fmt.Sprintf(`{"job":"api","port":9100,"pid":%d}`, os.Getpid())
	resp, err := client.Post("http://agent/v1/workers", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnprocessableEntity || !strings.Contains(string(b), "shareProcessNamespace: true") {
		t.Errorf("a caller outside the agent's PID namespace: %d %s, want 422 saying to share the namespace", resp.StatusCode, b)
	}
}
