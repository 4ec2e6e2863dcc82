//go:build linux

package integration

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/workersd/workersd/internal/buildtest"
)

// promtool runs promtool in examples/, where the relative paths of the
// configuration (rule files, the file_sd glob) resolve as they would next
// to a real prometheus.yml.
func promtool(t *testing.T, args ...string) string {
	t.Helper()
	bin := buildtest.RequireTool(t, "promtool", "apt-get install prometheus")
	cmd := exec.Command(bin, args...)
	cmd.Dir = filepath.Join("..", "examples")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func TestPromtoolCheckConfig(t *testing.T) {
	out := promtool(t, "check", "config", "prometheus.yml")
	// The config must load its rules (a missing file_sd file is only a
	// warning: sdwriter creates it).
	if !strings.Contains(out, "1 rule files found") {
		t.Errorf("promtool check config did not find the rule file:\n%s", out)
	}
}

func TestPromtoolCheckRules(t *testing.T) {
	out := promtool(t, "check", "rules", "rules.yml")
	if !strings.Contains(out, "SUCCESS") {
		t.Errorf("promtool check rules:\n%s", out)
	}
}

// TestPromtoolTestRules runs the unit tests of the rules: the recording
// rules sum across workers (through a restart) and each alert fires when it
// should and only then.
func TestPromtoolTestRules(t *testing.T) {
	out := promtool(t, "test", "rules", "rules_test.yml")
	if !strings.Contains(out, "SUCCESS") {
		t.Errorf("promtool test rules:\n%s", out)
	}
}
