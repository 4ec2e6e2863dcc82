//go:build linux

package packaging

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/workersd/workersd/internal/procgroup"
	"github.com/workersd/workersd/internal/testing/buildtest"
	"github.com/workersd/workersd/internal/testing/etcdtest"
	"github.com/workersd/workersd/internal/testing/poll"
	"github.com/workersd/workersd/internal/testing/servertest"
)

// previousRelease is the revision the upgrade starts from: the last one
// that landed before the agent's state file gained pending removals
// ("removing"), the change an upgrade must carry live workers across.
const previousRelease = "c4765ed"

// Issue 23: upgrading the package while workers run. The previous release
// and this tree are packaged (versions 0.9.0 and 1.0.0), the old one is
// installed with dpkg -i, and sdwriter and the agent run as their systemd
// units would (this machine has no systemd: the test does by hand what the
// units and the maintainer scripts do: run the binaries as the workersd
// user with the units' flags, sdwriter's embedded etcd on free ports
// instead of 2379). Workers register; the new package is installed over
// the old one and both daemons are restarted as `systemctl try-restart` in
// the postinst does (the agent stopped before sdwriter, sdwriter started
// first). Meanwhile the targets file is read every 20 ms: no target ever
// leaves it, none appears twice, and every worker keeps its slot.
func TestUpgradeKeepsEveryWorker(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and installs two packages")
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
	oldDeb, from := packageOld(t)
	newDeb := packageTree(t, "..", "1.0.0")
	t.Logf("upgrading from %s (%s) to this tree", filepath.Base(oldDeb), from)

	t.Cleanup(func() { exec.Command(dpkg, "-P", "workersd").Run() })
	run(t, dpkg, "-i", oldDeb)
	u, err := user.Lookup("workersd")
	if err != nil {
		t.Fatal(err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)

	// The units' directories: RuntimeDirectory=workersd (kept across
	// restarts), StateDirectory=workersd, ExecStartPre's targets/.
	// /run/workersd, away from a real one; t.TempDir's parent is 0700.
	runDir, err := os.MkdirTemp("", "workersd-run-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(runDir) })
	if err := os.Chmod(runDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(runDir, uid, gid); err != nil {
		t.Fatal(err)
	}
	logs := t.TempDir()
	etcdClient, etcdPeer, sdwWeb := etcdtest.FreeAddr(t), etcdtest.FreeAddr(t), etcdtest.FreeAddr(t)
	targets := "/var/lib/workersd/targets/workersd.json"
	sock := filepath.Join(runDir, "agent.sock")
	sdwriterArgs := []string{
		"--etcd.embed.data-dir=/var/lib/workersd/sdwriter.etcd",
		"--etcd.embed.listen-address=" + etcdClient, "--etcd.embed.peer-address=" + etcdPeer,
		"--output.file=" + targets, "--web.listen-address=" + sdwWeb,
	}
	agentArgs := []string{
		"--etcd.endpoints=" + etcdClient, "--host=web-1",
		"--listen.socket=" + sock, "--state.file=/var/lib/workersd/agent.json",
	}
	daemon := func(name string, args ...string) *unit {
		return startUnit(t, logs, name, uid, gid, "/usr/bin/"+name, args...)
	}
	sdw := daemon("sdwriter", sdwriterArgs...)
	waitReady(t, sdwWeb)
	agent := daemon("workersd-agent", agentArgs...)

	const n = 4
	api := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		},
	}}
	for i := range n {
		w := exec.Command("sleep", "600")
		if err := w.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { w.Process.Kill(); w.Wait() })
		body := fmt.Sprintf(`{"job":"upgrade","port":%d,"pid":%d}`, 19000+i, w.Process.Pid)
		poll.Until(t, 20*time.Second, func() bool {
			resp, err := api.Post("http://agent/v1/workers", "application/json", strings.NewReader(body))
			if err != nil {
				return false
			}
			resp.Body.Close()
			return resp.StatusCode == http.StatusCreated
		}, "worker %d did not register", i)
	}
	before := waitTargets(t, targets, n)

	watch := watchTargets(t, targets, before)
	run(t, dpkg, "-i", newDeb)
	// What `systemctl try-restart workersd-agent sdwriter` does: stop in
	// the reverse of the units' order, start in it.
	if err := agent.stop(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	if err := sdw.stop(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	sdw = daemon("sdwriter", sdwriterArgs...)
	waitReady(t, sdwWeb)
	agent = daemon("workersd-agent", agentArgs...)
	// The new agent has adopted every worker: all registered again.
	poll.Until(t, 30*time.Second, func() bool {
		resp, err := api.Get("http://agent/v1/workers")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		var list struct {
			Workers []struct{ State string } `json:"workers"`
		}
		if json.NewDecoder(resp.Body).Decode(&list) != nil || len(list.Workers) != n {
			return false
		}
		for _, w := range list.Workers {
			if w.State != "registered" {
				return false
			}
		}
		return true
	}, "the upgraded agent did not adopt every worker")
	// A few seconds more: a lost registration would leave the file after
	// the TTL (10 s) at the latest; the file is watched meanwhile.
	deadline := time.Now().Add(12 * time.Second)
	for time.Now().Before(deadline) && !t.Failed() {
		time.Sleep(200 * time.Millisecond)
	}
	reads := watch.stop()
	t.Logf("targets file read %d times through the upgrade: every worker on its slot, none twice", reads)
	if v := run(t, "/usr/bin/workersd-agent", "--version"); !strings.Contains(v, "version 1.0.0") {
		t.Errorf("after the upgrade, workersd-agent --version: %q", v)
	}
	agent.stop(5 * time.Second)
	sdw.stop(10 * time.Second)
}

// packageOld packages the previous release (from a git worktree of it) as
// version 0.9.0. Without the revision (a shallow clone), it packages this
// tree as 0.9.0: the upgrade path (dpkg, maintainer scripts, the agent's
// adoption across a restart) is still exercised, the change of code is
// not; the log says which.
func packageOld(t *testing.T) (deb, from string) {
	t.Helper()
	git := buildtest.RequireTool(t, "git", "apt-get install git")
	if exec.Command(git, "-C", "..", "cat-file", "-e", previousRelease+"^{commit}").Run() != nil {
		if os.Getenv("CI") == "true" {
			t.Logf("revision %s is not in this clone; upgrading from this tree packaged as 0.9.0", previousRelease)
		}
		return packageTree(t, "..", "0.9.0"), "this tree, relabelled"
	}
	wt := filepath.Join(t.TempDir(), "previous")
	run(t, git, "-C", "..", "worktree", "add", "--detach", wt, previousRelease)
	t.Cleanup(func() { exec.Command(git, "-C", "..", "worktree", "remove", "--force", wt).Run() })
	return packageTree(t, wt, "0.9.0"), "revision " + previousRelease
}

// packageTree runs a tree's scripts/package with version.
func packageTree(t *testing.T, tree, version string) string {
	t.Helper()
	cmd := exec.Command(filepath.Join(tree, "scripts", "package"), t.TempDir())
	cmd.Env = append(os.Environ(), "WORKERSD_VERSION="+version)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s/scripts/package: %v\n%s", tree, err, stderr.String())
	}
	return strings.TrimSpace(string(out))
}

// unit is a daemon run as its systemd unit would run it.
type unit struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
}

func startUnit(t *testing.T, logs, name string, uid, gid int, bin string, args ...string) *unit {
	t.Helper()
	logf, err := os.Create(filepath.Join(logs, fmt.Sprintf("%s-%d.log", name, time.Now().UnixNano())))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Dir = "/var/lib/workersd" // WorkingDirectory
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = procgroup.Attr()
	cmd.SysProcAttr.Credential = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)} // User=, Group=
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	u := &unit{name: name, cmd: cmd, done: make(chan struct{})}
	go func() { cmd.Wait(); logf.Close(); close(u.done) }()
	t.Cleanup(func() {
		procgroup.Kill(cmd.Process)
		<-u.done
		if t.Failed() {
			b, _ := os.ReadFile(logf.Name())
			t.Logf("%s log:\n%s", name, b)
		}
	})
	return u
}

// stop is systemd's stop: SIGTERM (KillSignal), SIGKILL after timeout.
func (u *unit) stop(timeout time.Duration) error {
	syscall.Kill(u.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-u.done:
		return nil
	case <-time.After(timeout):
		procgroup.Kill(u.cmd.Process)
		<-u.done
		return fmt.Errorf("%s did not stop within %s of SIGTERM", u.name, timeout)
	}
}

func waitReady(t *testing.T, web string) {
	t.Helper()
	poll.Until(t, 30*time.Second, func() bool {
		resp, err := http.Get("http://" + web + "/-/ready")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}, "sdwriter is not ready")
}

// waitTargets waits for n targets and returns address -> instance.
func waitTargets(t *testing.T, path string, n int) map[string]string {
	t.Helper()
	var got map[string]string
	poll.Until(t, 30*time.Second, func() bool {
		got = map[string]string{}
		for _, tg := range servertest.ReadTargets(t, path) {
			for _, a := range tg.Targets {
				got[a] = tg.Labels["instance"]
			}
		}
		return len(got) == n
	}, "want %d targets in %s", n, path)
	return got
}

type targetWatch struct {
	stop func() int
}

// watchTargets reads the targets file until stop and fails the test at
// the first read that lacks a target of want, has another instance for
// it, or lists an address or instance twice.
func watchTargets(t *testing.T, path string, want map[string]string) targetWatch {
	t.Helper()
	done := make(chan struct{})
	var wg sync.WaitGroup
	reads := 0
	wg.Go(func() {
		for {
			select {
			case <-done:
				return
			case <-time.After(20 * time.Millisecond):
			}
			b, err := os.ReadFile(path)
			if err != nil {
				t.Errorf("read %s: %v", path, err)
				return
			}
			var groups []servertest.Target
			if err := json.Unmarshal(b, &groups); err != nil {
				t.Errorf("%s does not parse: %v", path, err)
				return
			}
			reads++
			addrs, instances := map[string]bool{}, map[string]bool{}
			for _, g := range groups {
				for _, a := range g.Targets {
					inst := g.Labels["instance"]
					if addrs[a] || instances[inst] {
						t.Errorf("%s or %s twice in the file: %s", a, inst, b)
						return
					}
					addrs[a], instances[inst] = true, true
					if w, ok := want[a]; ok && w != inst {
						t.Errorf("%s moved from %s to %s", a, w, inst)
						return
					}
				}
			}
			for a := range want {
				if !addrs[a] {
					t.Errorf("%s left the file during the upgrade: %s", a, b)
					return
				}
			}
		}
	})
	return targetWatch{stop: func() int { close(done); wg.Wait(); return reads }}
}
