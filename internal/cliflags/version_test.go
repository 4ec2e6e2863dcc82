package cliflags

import (
	"debug/buildinfo"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime/debug"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/workersd/workersd/internal/testing/buildtest"
	"github.com/workersd/workersd/internal/testing/etcdtest"
	"github.com/workersd/workersd/internal/testing/poll"
)

func TestVersionFromBuildInfo(t *testing.T) {
	vcs := func(rev, modified string) []debug.BuildSetting {
		return []debug.BuildSetting{{Key: "vcs", Value: "git"}, {Key: "vcs.revision", Value: rev}, {Key: "vcs.modified", Value: modified}}
	}
	const rev = "0123456789abcdef0123456789abcdef01234567"
	for _, c := range []struct {
		name          string
		main          string
		settings      []debug.BuildSetting
		wantV, wantRv string
	}{
		{"go build in a clean checkout", "v0.0.0-20260101120000-0123456789ab", vcs(rev, "false"), "0.0.0-20260101120000-0123456789ab", rev},
		{"go build in a modified checkout", "v0.0.0-20260101120000-0123456789ab+dirty", vcs(rev, "true"), "0.0.0-20260101120000-0123456789ab+dirty", rev + "-modified"},
		{"go build at a tag", "v1.2.3", vcs(rev, "false"), "1.2.3", rev},
		{"go install at a pseudo-version", "v0.0.0-20260101120000-0123456789ab", nil, "0.0.0-20260101120000-0123456789ab", "0123456789ab"},
		{"go install after a tag", "v1.2.4-0.20260101120000-0123456789ab", nil, "1.2.4-0.20260101120000-0123456789ab", "0123456789ab"},
		{"go install at a tag", "v1.2.3", nil, "1.2.3", ""},
		{"outside VCS", "(devel)", nil, "(devel)", ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			v, r := versionFromBuildInfo(&debug.BuildInfo{Main: debug.Module{Path: "github.com/workersd/workersd", Version: c.main}, Settings: c.settings})
			if v != c.wantV || r != c.wantRv {
				t.Errorf("got version %q revision %q, want %q %q", v, r, c.wantV, c.wantRv)
			}
		})
	}
}

// versionLine is the first line of --version (prometheus/common/version).
var versionLine = regexp.MustCompile(`^(\S+), version (.*) \(branch: (.*), revision: (.*)\)$`)

type printed struct{ version, revision string }

func runVersion(t *testing.T, bin string) printed {
	t.Helper()
	out, err := exec.Command(bin, "--version").CombinedOutput()
	if err != nil {
		t.Fatalf("%s --version: %v\n%s", filepath.Base(bin), err, out)
	}
	first, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
	m := versionLine.FindStringSubmatch(first)
	if m == nil {
		t.Fatalf("%s --version printed %q", filepath.Base(bin), out)
	}
	t.Logf("%s --version: %s", filepath.Base(bin), first)
	return printed{version: m[2], revision: m[4]}
}

// build builds the daemons into a directory of their own with GOFLAGS set
// to goflags (in place of the machine's: a `go env -w GOFLAGS=-buildvcs=false`
// would hide what a user's build prints).
func build(t *testing.T, goflags string, pkgs ...string) string {
	t.Helper()
	t.Setenv("GOFLAGS", goflags)
	dir := t.TempDir()
	if err := buildtest.Build(dir, pkgs...); err != nil {
		t.Fatal(err)
	}
	return dir
}

// gitCheckout says whether the module is in a git checkout that git can
// read, where `go build` stamps the commit.
func gitCheckout(t *testing.T) (root string, ok bool) {
	t.Helper()
	gomod, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		t.Fatal(err)
	}
	root = filepath.Dir(strings.TrimSpace(string(gomod)))
	out, err := exec.Command("git", "-C", root, "rev-parse", "--show-toplevel").Output()
	if err != nil {
		return root, false
	}
	// Go stamps a build only from a checkout whose .git is a directory
	// (cmd/go/internal/vcs: {filename: ".git", isDir: true}); a linked
	// worktree's .git is a file, and its builds are as outside a checkout.
	fi, err := os.Stat(filepath.Join(strings.TrimSpace(string(out)), ".git"))
	return root, err == nil && fi.IsDir()
}

// Built as a user builds them (go build, no -ldflags), both daemons print
// the version and the revision the toolchain recorded, in --version and in
// workersd_build_info (issue 23, acceptance 2).
func TestVersionWithoutLdflags(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the daemons")
	}
	root, checkout := gitCheckout(t)
	dir := build(t, "-buildvcs=auto", "./cmd/sdwriter", "./cmd/workersd-agent")
	for _, name := range []string{"sdwriter", "workersd-agent"} {
		bin := filepath.Join(dir, name)
		info, err := buildinfo.ReadFile(bin)
		if err != nil {
			t.Fatal(err)
		}
		got := runVersion(t, bin)
		if got.version == "" || got.revision == "" {
			t.Fatalf("%s: version %q, revision %q: both must be set", name, got.version, got.revision)
		}
		if want := strings.TrimPrefix(info.Main.Version, "v"); got.version != want {
			t.Errorf("%s: version %q, want the module version %q", name, got.version, want)
		}
		if !checkout {
			// Outside VCS the toolchain records no commit: Go's "(devel)"
			// and prometheus/common's "unknown".
			if got.version != "(devel)" || got.revision != "unknown" {
				t.Errorf("%s outside a git checkout: version %q revision %q, want (devel) unknown", name, got.version, got.revision)
			}
			continue
		}
		var rev, modified string
		for _, s := range info.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.modified":
				modified = s.Value
			}
		}
		if got.version == "(devel)" {
			t.Errorf("%s: version (devel) from a git checkout; want the version Go derives from it", name)
		}
		want := rev
		if modified == "true" {
			want += "-modified"
		}
		if rev == "" || got.revision != want {
			t.Errorf("%s: revision %q, want %q (vcs.revision %q, vcs.modified %q)", name, got.revision, want, rev, modified)
		}
		if out, err := exec.Command("git", "-C", root, "cat-file", "-t", rev).Output(); err != nil || strings.TrimSpace(string(out)) != "commit" {
			t.Errorf("%s: revision %q is no commit of this checkout: %v %s", name, rev, err, out)
		}
		// workersd_build_info reads the same variables.
		info2 := buildInfoMetric(t, bin, name)
		if info2.version != got.version || info2.revision != got.revision {
			t.Errorf("%s: workersd_build_info has version %q revision %q; --version %q %q", name, info2.version, info2.revision, got.version, got.revision)
		}
	}
}

// A build outside VCS (here -buildvcs=false, as for a source tarball)
// prints version "(devel)" and revision "unknown": all it knows.
func TestVersionOutsideVCS(t *testing.T) {
	if testing.Short() {
		t.Skip("builds sdwriter")
	}
	dir := build(t, "-buildvcs=false", "./cmd/sdwriter")
	got := runVersion(t, filepath.Join(dir, "sdwriter"))
	if got.version != "(devel)" || got.revision != "unknown" {
		t.Errorf("version %q revision %q, want (devel) unknown", got.version, got.revision)
	}
}

// The -ldflags -X values (scripts/package) win over the build information,
// VCS stamp included.
func TestLdflagsWin(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the daemons")
	}
	const v = "github.com/prometheus/common/version"
	dir := build(t, "-buildvcs=auto '-ldflags=-X "+v+".Version=9.8.7-test -X "+v+".Revision=feedc0de -X "+v+".Branch=release-9'",
		"./cmd/sdwriter", "./cmd/workersd-agent")
	for _, name := range []string{"sdwriter", "workersd-agent"} {
		got := runVersion(t, filepath.Join(dir, name))
		if got.version != "9.8.7-test" || got.revision != "feedc0de" {
			t.Errorf("%s: version %q revision %q, want the ldflags' 9.8.7-test feedc0de", name, got.version, got.revision)
		}
	}
	info := buildInfoMetric(t, filepath.Join(dir, "sdwriter"), "sdwriter")
	if info.version != "9.8.7-test" || info.revision != "feedc0de" {
		t.Errorf("workersd_build_info: version %q revision %q, want 9.8.7-test feedc0de", info.version, info.revision)
	}
}

var buildInfoLabel = regexp.MustCompile(`(\w+)="([^"]*)"`)

// buildInfoMetric runs the daemon against a real etcd and reads
// workersd_build_info from its /metrics.
func buildInfoMetric(t *testing.T, bin, name string) printed {
	t.Helper()
	etcd := etcdtest.Start(t)
	dir := t.TempDir()
	web := etcdtest.FreeAddr(t)
	args := []string{"--etcd.endpoints=" + etcd.Endpoint(), "--web.listen-address=" + web}
	if name == "sdwriter" {
		args = append(args, "--output.file="+filepath.Join(dir, "targets.json"))
	} else {
		args = append(args, "--listen.socket="+filepath.Join(dir, "agent.sock"), "--state.file="+filepath.Join(dir, "agent.json"), "--host=h")
	}
	cmd := exec.Command(bin, args...)
	logf, err := os.Create(filepath.Join(dir, name+".log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	defer func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	}()
	var line string
	client := &http.Client{Timeout: 2 * time.Second}
	poll.Until(t, 30*time.Second, func() bool {
		resp, err := client.Get("http://" + web + "/metrics")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		for l := range strings.SplitSeq(string(b), "\n") {
			if strings.HasPrefix(l, "workersd_build_info{") {
				line = l
				return true
			}
		}
		return false
	}, "%s serves no workersd_build_info on %s (log in %s)", name, web, logf.Name())
	var p printed
	for _, m := range buildInfoLabel.FindAllStringSubmatch(line, -1) {
		switch m[1] {
		case "version":
			p.version = m[2]
		case "revision":
			p.revision = m[2]
		}
	}
	t.Logf("%s: %s", name, line)
	return p
}
