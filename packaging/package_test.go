//go:build linux

package packaging

import (
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strings"
	"testing"

	"github.com/workersd/workersd/internal/testing/buildtest"
)

// The package builds, installs with dpkg -i on this Debian machine, holds
// the binaries, units and directories with their modes and the workersd
// system user, answers --version with its version, and purges without a
// trace (issue 10).
func TestDebianPackage(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and installs a package")
	}
	dpkg := buildtest.RequireTool(t, "dpkg", "a Debian system")
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("installs a package: needs root, which CI has")
		}
		t.Skip("installs a package: needs root")
	}
	if exec.Command(dpkg, "-s", "workersd").Run() == nil {
		t.Skip("a workersd package is installed on this machine; not touching it")
	}
	if _, err := user.Lookup("workersd"); err == nil {
		t.Skip("a workersd user exists on this machine; purging would remove it")
	}
	out, err := exec.Command(filepath.Join("..", "scripts", "package"), t.TempDir()).Output()
	if err != nil {
		t.Fatalf("scripts/package: %v", err)
	}
	deb := strings.TrimSpace(string(out))
	version := strings.Split(filepath.Base(deb), "_")[1]
	t.Logf("built %s", deb)

	t.Cleanup(func() { exec.Command(dpkg, "-P", "workersd").Run() })
	run(t, dpkg, "-i", deb)

	for path, mode := range map[string]os.FileMode{
		"/usr/bin/sdwriter":                          0o755,
		"/usr/bin/workersd-agent":                    0o755,
		"/lib/systemd/system/sdwriter.service":       0o644,
		"/lib/systemd/system/workersd-agent.service": 0o644,
		"/usr/share/doc/workersd/copyright":          0o644,
		"/var/lib/workersd":                          0o755 | os.ModeDir,
		"/var/lib/workersd/targets":                  0o755 | os.ModeDir,
	} {
		fi, err := os.Stat(path)
		if err != nil {
			t.Errorf("installed: %v", err)
			continue
		}
		if got := fi.Mode() & (os.ModeDir | os.ModePerm); got != mode {
			t.Errorf("%s: mode %v, want %v", path, got, mode)
		}
	}
	u, err := user.Lookup("workersd")
	if err != nil {
		t.Fatalf("no workersd user: %v", err)
	}
	if g, err := user.LookupGroupId(u.Gid); err != nil || g.Name != "workersd" {
		t.Errorf("workersd's group: %v %v", g, err)
	}
	if passwd, _ := exec.Command("getent", "passwd", "workersd").Output(); !strings.Contains(string(passwd), "nologin") && !strings.Contains(string(passwd), "/bin/false") {
		t.Errorf("workersd can log in: %s", passwd)
	}
	owner, _ := exec.Command("stat", "-c", "%U:%G", "/var/lib/workersd/targets").Output()
	if strings.TrimSpace(string(owner)) != "workersd:workersd" {
		t.Errorf("/var/lib/workersd/targets is owned by %s", owner)
	}
	for _, bin := range []string{"sdwriter", "workersd-agent"} {
		v := run(t, "/usr/bin/"+bin, "--version")
		if !strings.Contains(v, "version "+version) {
			t.Errorf("%s --version: %q, want version %s", bin, v, version)
		}
	}

	run(t, dpkg, "-P", "workersd")
	for _, path := range []string{"/usr/bin/sdwriter", "/usr/bin/workersd-agent", "/lib/systemd/system/sdwriter.service", "/var/lib/workersd", "/usr/share/doc/workersd"} {
		if _, err := os.Stat(path); err == nil {
			t.Errorf("%s is left after purge", path)
		}
	}
	if _, err := user.Lookup("workersd"); err == nil {
		t.Error("the workersd user is left after purge")
	}
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}
