package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/workersd/workersd/internal/testing/buildtest"
	"github.com/workersd/workersd/internal/testing/etcdtest"
)

// The quick start runs, shows four targets, replaces a killed worker in a
// slot of its own while the killed one's is held, finds its Prometheus set
// up for exact totals with "sdwriter check", ends with Prometheus' job-wide
// total equal to the units processed, and leaves no process behind.
func TestDemo(t *testing.T) {
	if testing.Short() {
		t.Skip("builds sdwriter and runs processes")
	}
	buildtest.RequirePrometheus3(t) // the demo finds it in bin/
	dir := t.TempDir()
	if err := buildtest.Build(dir, "./examples/demo"); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "demo")
	work := filepath.Join(dir, "work")
	cmd := exec.Command(bin,
		"--duration=40s", "--interval=1s", "--kill-after=5s", "--ttl=2s",
		"--prometheus.listen-address="+etcdtest.FreeAddr(t),
		"--etcd.listen-address="+etcdtest.FreeAddr(t),
		"--etcd.peer-address="+etcdtest.FreeAddr(t),
		"--sdwriter.listen-address="+etcdtest.FreeAddr(t),
		"--work-dir="+work,
	)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	t.Logf("demo output:\n%s", out.String())
	if err != nil {
		t.Fatalf("demo: %v", err)
	}
	text := out.String()
	for _, want := range []string{
		"job demo: 4 targets",
		"SUM of the live workers",
		">>> killed w1",
		">>> w1 is gone from the targets",
		"is held until Prometheus is surely done",
		">>> is this Prometheus set up for exact totals? sdwriter check",
		"sdwriter check: no errors, 0 warnings on 1 Prometheus server",
		"final: Prometheus' job-wide total",
		"exact, through the kill and the replacement",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	// No child left: nothing runs from the work directory.
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err == nil && bytes.Contains(b, []byte(work)) {
			t.Errorf("process left behind: %s: %s", p, bytes.ReplaceAll(b, []byte{0}, []byte{' '}))
		}
	}
}
