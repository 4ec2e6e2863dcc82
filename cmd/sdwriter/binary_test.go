package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/workersd/workersd/internal/etcdclient"
	"github.com/workersd/workersd/internal/testing/buildtest"
	"github.com/workersd/workersd/internal/testing/etcdtest"
	"github.com/workersd/workersd/internal/testing/poll"
	"github.com/workersd/workersd/registrar"
)

// buildBinary builds sdwriter into a temporary directory, once per test
// binary.
var buildBinary = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "sdwriter-bin-")
	if err != nil {
		return "", err
	}
	if err := buildtest.Build(dir, "./cmd/sdwriter"); err != nil {
		return "", err
	}
	return filepath.Join(dir, "sdwriter"), nil
})

func binary(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("builds the sdwriter binary")
	}
	bin, err := buildBinary()
	if err != nil {
		t.Fatalf("go build: %v", err)
	}
	return bin
}

func TestMain(m *testing.M) {
	code := m.Run()
	if bin, err := buildBinary(); err == nil && bin != "" {
		os.RemoveAll(filepath.Dir(bin))
	}
	os.Exit(code)
}

// syncBuffer collects a process's output.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Acceptance 5: sdwriter with no etcd flags, in an empty directory, starts
// an embedded etcd, and a registrar registers against it. (Only the ports
// are given, so that the test does not take 2379.) SIGTERM stops it cleanly.
func TestEmbeddedEtcdByDefault(t *testing.T) {
	bin := binary(t)
	dir := t.TempDir()
	etcdAddr, web := etcdtest.FreeAddr(t), etcdtest.FreeAddr(t)
	cmd := exec.Command(bin,
		"--etcd.embed.listen-address="+etcdAddr,
		"--etcd.embed.peer-address="+etcdtest.FreeAddr(t),
		"--web.listen-address="+web)
	cmd.Dir = dir
	var logs syncBuffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	stopped := false
	defer func() {
		if !stopped {
			cmd.Process.Kill()
			<-exited
		}
		t.Logf("sdwriter log:\n%s", logs.String())
	}()
	poll.Until(t, 60*time.Second, func() bool {
		code, _, _ := httpGet("http://" + web + "/-/ready")
		return code == 200
	}, "sdwriter ready")
	if !strings.Contains(logs.String(), "embedded single-member etcd") {
		t.Error("the log does not say that an embedded etcd was started")
	}

	cli, err := etcdclient.New([]string{etcdAddr}, clientv3.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	r, err := registrar.New(registrar.Config{Client: cli, Job: "api", Host: "web-1", Value: registrar.Value{Address: "127.0.0.1:45678"}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r.Register(ctx)
	if err := r.WaitRegistered(ctx); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "workersd.json")
	b := waitFile(t, file, "127.0.0.1:45678")
	if !bytes.Contains(b, []byte(`"instance":"web-1/0"`)) {
		t.Errorf("file:\n%s", b)
	}
	if err := r.Deregister(ctx); err != nil {
		t.Fatal(err)
	}
	waitFile(t, file)
	if _, err := os.Stat(filepath.Join(dir, "sdwriter.etcd")); err != nil {
		t.Errorf("embedded etcd data directory: %v", err)
	}

	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-exited:
		stopped = true
		if err != nil {
			t.Errorf("sdwriter after SIGTERM: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("sdwriter did not stop on SIGTERM")
	}
}

func TestBinaryFlags(t *testing.T) {
	bin := binary(t)
	out, err := exec.Command(bin, "--etcd.prefix=nope").CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 2 || !strings.Contains(string(out), "--etcd.prefix") {
		t.Errorf("bad flag: %v %q", err, out)
	}
	out, err = exec.Command(bin, "--version").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "sdwriter") {
		t.Errorf("--version: %v %q", err, out)
	}
	out, err = exec.Command(bin, "--help").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "sdwriter check --help") || !strings.Contains(string(out), "--prometheus.url") {
		t.Errorf("--help does not mention sdwriter check and --prometheus.url: %v\n%s", err, out)
	}
}

// Issue 24: "sdwriter check" exits 2 on a bad flag, naming it, and 1 when
// a finding is an error (here: no Prometheus answers), printing it.
func TestBinaryCheck(t *testing.T) {
	bin := binary(t)
	exit := func(err error) int {
		var e *exec.ExitError
		if errors.As(err, &e) {
			return e.ExitCode()
		}
		if err != nil {
			t.Fatal(err)
		}
		return 0
	}
	file := filepath.Join(t.TempDir(), "workersd.json")
	if err := os.WriteFile(file, []byte("[]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ args, flag string }{
		{"--prometheus.url=http://localhost:9090 --output.file=" + file + " --check.slot-hold=soon", "--check.slot-hold"},
		{"--prometheus.url=http://localhost:9090 --output.file=" + file + " --check.final-scrape-timeout=-1s", "--check.final-scrape-timeout"},
		{"--prometheus.url=localhost:9090 --output.file=" + file, "--prometheus.url"},
		{"--output.file=" + file, "--prometheus.url"},
		{"--prometheus.url=http://localhost:9090 --prometheus.http-config-file=" + file + ".missing --output.file=" + file, "--prometheus.http-config-file"},
		{"--prometheus.url=http://localhost:9090", "--output.file or --sdwriter.url"},
		{"--prometheus.url=http://localhost:9090 --sdwriter.url=localhost:9850", "--sdwriter.url"},
		{"--prometheus.url=http://localhost:9090 --output.file=" + file + " --format=xml", "--format"},
		{"--prometheus.url=http://localhost:9090 --output.file=" + file + " --no-such-flag", "--no-such-flag"},
	} {
		out, err := exec.Command(bin, append([]string{"check"}, strings.Fields(c.args)...)...).CombinedOutput()
		if code := exit(err); code != 2 || !strings.Contains(string(out), "sdwriter check: error: ") || !strings.Contains(string(out), c.flag) {
			t.Errorf("check %s: exit %d, want 2 and an error naming %s:\n%s", c.args, code, c.flag, out)
		}
	}
	out, err := exec.Command(bin, "check", "--prometheus.url=http://"+etcdtest.FreeAddr(t), "--output.file="+file).CombinedOutput()
	if code := exit(err); code != 1 || !strings.Contains(string(out), "error prometheus_unreachable: cannot reach it") {
		t.Errorf("check of nothing: exit %d, want 1 and prometheus_unreachable:\n%s", code, out)
	}
	out, err = exec.Command(bin, "check", "--help").CombinedOutput()
	if exit(err) != 0 || !strings.Contains(string(out), "--sdwriter.url") || !strings.Contains(string(out), "--check.slot-hold") {
		t.Errorf("check --help: %v\n%s", err, out)
	}
}
