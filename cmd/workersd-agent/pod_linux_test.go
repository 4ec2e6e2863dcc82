package main

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/workersd/workersd/internal/buildtest"
	"github.com/workersd/workersd/internal/poll"
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
}
