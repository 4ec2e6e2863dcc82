// Package buildtest builds the project's commands for tests that run them as
// separate processes (a killed sdwriter, a demo worker, an etcd member), the
// same way from any package's directory.
package buildtest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// Build compiles the main packages pkgs, given from the module root (such as
// "./cmd/sdwriter"), into dir, each binary named after its package.
func Build(dir string, pkgs ...string) error {
	gobin := goCommand()
	gomod, err := exec.Command(gobin, "env", "GOMOD").Output()
	if err != nil {
		return fmt.Errorf("go env GOMOD: %w", err)
	}
	cmd := exec.Command(gobin, append([]string{"build", "-o", dir + string(filepath.Separator)}, pkgs...)...)
	cmd.Dir = filepath.Dir(strings.TrimSpace(string(gomod)))
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
