//go:build linux

package integration

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"go.yaml.in/yaml/v2"

	"github.com/workersd/workersd/internal/testing/buildtest"
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

// The output path is one and the same where a user reads it: the README's
// sdwriter command, the systemd unit, and the file_sd glob of
// examples/prometheus.yml (issue 10: followed literally, three different
// paths meant Prometheus saw no target).
func TestOutputPathIsOneAndTheSame(t *testing.T) {
	read := func(p string) string {
		b, err := os.ReadFile(filepath.Join("..", p))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	flag := regexp.MustCompile(`--output\.file=(/[^\s\\]+)`)
	paths := map[string]bool{}
	for _, f := range []string{"README.md", "examples/systemd/sdwriter.service"} {
		ms := flag.FindAllStringSubmatch(read(f), -1)
		if len(ms) == 0 {
			t.Fatalf("%s names no --output.file", f)
		}
		for _, m := range ms {
			paths[m[1]] = true
		}
	}
	if len(paths) != 1 {
		t.Fatalf("README.md and the systemd unit name %d output paths: %v", len(paths), paths)
	}
	var cfg struct {
		ScrapeConfigs []struct {
			FileSD []struct {
				Files []string `yaml:"files"`
			} `yaml:"file_sd_configs"`
		} `yaml:"scrape_configs"`
	}
	if err := yaml.Unmarshal([]byte(read("examples/prometheus.yml")), &cfg); err != nil {
		t.Fatal(err)
	}
	var globs []string
	for _, sc := range cfg.ScrapeConfigs {
		for _, sd := range sc.FileSD {
			globs = append(globs, sd.Files...)
		}
	}
	for path := range paths {
		matched := false
		for _, g := range globs {
			if ok, _ := filepath.Match(g, path); ok {
				matched = true
			}
		}
		if !matched {
			t.Errorf("examples/prometheus.yml reads %v, which does not match sdwriter's %s", globs, path)
		}
	}
}

// Issue 15: every alert of examples/rules.yml links its section of
// docs/RUNBOOK.md, and the section exists.
func TestEveryAlertHasARunbook(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "examples", "rules.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var rules struct {
		Groups []struct {
			Rules []struct {
				Alert       string            `yaml:"alert"`
				Annotations map[string]string `yaml:"annotations"`
			} `yaml:"rules"`
		} `yaml:"groups"`
	}
	if err := yaml.Unmarshal(b, &rules); err != nil {
		t.Fatal(err)
	}
	runbook, err := os.ReadFile(filepath.Join("..", "docs", "RUNBOOK.md"))
	if err != nil {
		t.Fatal(err)
	}
	const base = "https://github.com/workersd/workersd/blob/main/docs/RUNBOOK.md#"
	alerts := 0
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			if r.Alert == "" {
				continue
			}
			alerts++
			if want := base + strings.ToLower(r.Alert); r.Annotations["runbook_url"] != want {
				t.Errorf("%s: runbook_url %q, want %q", r.Alert, r.Annotations["runbook_url"], want)
			}
			if !regexp.MustCompile(`(?m)^## ` + regexp.QuoteMeta(r.Alert) + `$`).Match(runbook) {
				t.Errorf("docs/RUNBOOK.md has no section %q", "## "+r.Alert)
			}
		}
	}
	if alerts == 0 {
		t.Fatal("no alert found in examples/rules.yml")
	}
}
