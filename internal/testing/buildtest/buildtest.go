// Package buildtest builds the project's commands for tests that run them as
// separate processes (a killed sdwriter, a demo worker, an etcd member), the
// same way from any package's directory, and finds the external programs
// they run beside them (Prometheus, gunicorn) with one policy: missing, a
// test skips, except in CI, where it fails.
package buildtest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// Build compiles the main packages pkgs, given from the module root (such as
// "./cmd/sdwriter"), into dir, each binary named after its package.
func Build(dir string, pkgs ...string) error {
	root, err := moduleRoot()
	if err != nil {
		return err
	}
	cmd := exec.Command(goCommand(), append([]string{"build", "-o", dir + string(filepath.Separator)}, pkgs...)...)
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build %s: %w\n%s", strings.Join(pkgs, " "), err, out)
	}
	return nil
}

// goCommand is the go command on PATH, else the one under $GOROOT.
func goCommand() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	return filepath.Join(os.Getenv("GOROOT"), "bin", "go")
}

// moduleRoot is the directory of the main module's go.mod.
func moduleRoot() (string, error) {
	gomod, err := exec.Command(goCommand(), "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	return filepath.Dir(strings.TrimSpace(string(gomod))), nil
}

// RequireTool finds an external program on PATH. Missing, it skips the
// test, but fails it in CI (CI=true), where scripts/test must have
// installed it; hint says how to get it.
func RequireTool(t testing.TB, name, hint string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		Missing(t, fmt.Sprintf("%s is not on PATH (%s)", name, hint))
	}
	return p
}

// Prometheus3Version is the Prometheus scripts/prometheus builds.
const Prometheus3Version = "3.15.0"

// RequirePrometheus3 finds the Prometheus 3 that scripts/prometheus builds:
// $WORKERSD_PROMETHEUS3, else bin/prometheus-<version> in the module root.
// Missing, it skips the test, but fails it in CI.
func RequirePrometheus3(t testing.TB) string {
	t.Helper()
	p := os.Getenv("WORKERSD_PROMETHEUS3")
	if p == "" {
		root, err := moduleRoot()
		if err != nil {
			t.Fatal(err)
		}
		p = filepath.Join(root, "bin", "prometheus-"+Prometheus3Version)
	}
	if _, err := os.Stat(p); err != nil {
		Missing(t, fmt.Sprintf("Prometheus %s is not at %s (scripts/prometheus builds it)", Prometheus3Version, p))
	}
	return p
}

// RequireRoot skips a test that needs root (namespaces, other users'
// processes) when not run as root, but fails it in CI, which runs as root;
// why says what needs it.
func RequireRoot(t testing.TB, why string) {
	t.Helper()
	if os.Geteuid() != 0 {
		Missing(t, why+" needs root")
	}
}

// Missing is the policy for a component a test needs that is not there:
// the test is skipped, but fails in CI, where scripts/test must provide
// it. msg says what is missing.
func Missing(t testing.TB, msg string) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatal(msg + "; in CI, scripts/test must provide it")
	}
	t.Skip(msg + "; skipping")
}

// Python returns a Python 3 that can import every one of modules (Debian's
// /usr/bin/python3 where scripts/test installs python3-prometheus-client
// and the like, or the first python3 on PATH that has them). Missing, it
// skips the test, but fails it in CI.
func Python(t testing.TB, modules ...string) string {
	t.Helper()
	var candidates []string
	if p, err := exec.LookPath("python3"); err == nil {
		candidates = append(candidates, p)
	}
	candidates = append(candidates, "/usr/bin/python3")
	script := "import " + strings.Join(append([]string{"sys"}, modules...), ", ")
	var last string
	for _, p := range candidates {
		out, err := exec.Command(p, "-c", script).CombinedOutput()
		if err == nil {
			return p
		}
		last = fmt.Sprintf("%s: %v: %s", p, err, out)
	}
	Missing(t, fmt.Sprintf("no python3 can import %s (%s)", strings.Join(modules, ", "), last))
	return ""
}
