package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/workersd/workersd/internal/buildtest"
	"github.com/workersd/workersd/internal/etcdtest"
)

// The quick start runs, shows four targets, replaces a killed worker in the
// same slot, and leaves no process behind.
func TestDemo(t *testing.T) {
	if testing.Short() {
		t.Skip("builds sdwriter and runs processes")
	}
	dir := t.TempDir()
	if err := buildtest.Build(dir, "./examples/demo"); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "demo")
	work := filepath.Join(dir, "work")
	cmd := exec.Command(bin,
		"--duration=20s", "--interval=1s", "--kill-after=5s", "--ttl=2s", "--no-prometheus",
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
		"SUM (scraped now)",
		">>> killed w1",
		">>> w1 is gone from the targets",
		"the same slot",
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
