//go:build linux

package integration

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/workersd/workersd/internal/etcdclient"
	"github.com/workersd/workersd/internal/testing/etcdtest"
	"github.com/workersd/workersd/registrar"
)

// authSetup is docs/ETCD.md's production setup, applied by an admin:
// etcd authentication on; each host's user may write only its own
// (job, host) keys and holds; sdwriter's user may only read.
func authSetup(t *testing.T, admin *clientv3.Client, hosts map[string][]string) {
	t.Helper()
	authUsers(t, admin)
	for host, jobs := range hosts {
		for _, job := range jobs {
			if err := authGrantHost(admin, job, host); err != nil {
				t.Fatal(err)
			}
		}
	}
	authEnable(t, admin)
}

// The users docs/ETCD.md names and their passwords.
const (
	rootPassword     = "root-secret"
	sdwriterPassword = "sdwriter-secret"
)

func hostPassword(host string) string { return host + "-secret" }

// authUsers adds root and sdwriter's read-only user.
func authUsers(t *testing.T, admin *clientv3.Client) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	must := mustEtcd(t)
	must(admin.UserAdd(ctx, "root", rootPassword))
	must(admin.UserGrantRole(ctx, "root", "root"))
	must(admin.RoleAdd(ctx, "workersd-reader"))
	must(admin.RoleGrantPermission(ctx, "workersd-reader", prefix, clientv3.GetPrefixRangeEnd(prefix), clientv3.PermissionType(clientv3.PermRead)))
	must(admin.UserAdd(ctx, "sdwriter", sdwriterPassword))
	must(admin.UserGrantRole(ctx, "sdwriter", "workersd-reader"))
}

// authGrantHost lets host's user (created with its role on first use) write
// job's keys and holds on that host, and read every registration.
func authGrantHost(admin *clientv3.Client, job, host string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	role := "workersd-host-" + host
	var errs []error
	do := func(_ any, err error) { errs = append(errs, err) }
	if _, err := admin.RoleGet(ctx, role); errors.Is(err, rpctypes.ErrRoleNotFound) {
		do(admin.RoleAdd(ctx, role))
		do(admin.RoleGrantPermission(ctx, role, prefix, clientv3.GetPrefixRangeEnd(prefix), clientv3.PermissionType(clientv3.PermRead)))
		do(admin.UserAdd(ctx, host, hostPassword(host)))
		do(admin.UserGrantRole(ctx, host, role))
	} else if err != nil {
		return fmt.Errorf("role %s: %w", role, err)
	}
	k := registrar.Key{Prefix: prefix, Job: job, Host: host}
	for _, key := range []string{k.SlotPrefix(), k.HoldSlotPrefix()} {
		do(admin.RoleGrantPermission(ctx, role, key, clientv3.GetPrefixRangeEnd(key), clientv3.PermissionType(clientv3.PermReadWrite)))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("granting %s/%s to %s: %w", job, host, host, err)
	}
	return nil
}

func authEnable(t *testing.T, admin *clientv3.Client) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	mustEtcd(t)(admin.AuthEnable(ctx))
}

func mustEtcd(t *testing.T) func(any, error) {
	return func(_ any, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
}

// Issue 12, acceptance 3: with etcd authentication on, a worker on host
// web-1 registers with web-1's credentials, sdwriter reads with read-only
// ones and Prometheus' file holds the worker; web-1's credentials cannot
// write web-2's keys or another job's, sdwriter's cannot write at all.
func TestEtcdAuthScopedPerHost(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the binaries")
	}
	bin := binaries(t)
	etcd := etcdtest.Start(t)
	authSetup(t, etcd.Client(t), map[string][]string{"web-1": {"demo"}, "web-2": {"demo"}})

	dir := t.TempDir()
	logs := filepath.Join(dir, "logs")
	if err := os.Mkdir(logs, 0o755); err != nil {
		t.Fatal(err)
	}
	secret := func(name, pw string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(pw+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	e := &env{t: t, dir: dir, logs: logs, targets: filepath.Join(dir, "targets.json")}
	startProc(t, logs, "sdwriter", filepath.Join(bin, "sdwriter"), "--etcd.endpoints="+etcd.Endpoint(),
		"--etcd.username=sdwriter", "--etcd.password-file="+secret("sdwriter.pw", sdwriterPassword),
		"--output.file="+e.targets, "--web.listen-address="+etcdtest.FreeAddr(t))
	w := startProc(t, logs, "worker", filepath.Join(bin, "demoworker"), "--etcd.endpoints="+etcd.Endpoint(),
		"--etcd.username=web-1", "--etcd.password-file="+secret("web-1.pw", hostPassword("web-1")),
		"--job=demo", "--host=web-1", "--ttl=2s", "--listen-address=127.0.0.1:0", "--final-scrape-timeout=0s")
	addr, err := w.waitLine("listening on", 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	e.waitFileAddrs("demo", []string{addr}, 30*time.Second)

	client := func(user, pw string) *clientv3.Client {
		c, err := etcdclient.New([]string{etcd.Endpoint()}, clientv3.Config{Username: user, Password: pw})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	web1, reader := client("web-1", hostPassword("web-1")), client("sdwriter", sdwriterPassword)
	for _, tc := range []struct {
		who string
		cli *clientv3.Client
		key string
	}{
		{"web-1", web1, prefix + "demo/web-2/0"},
		{"web-1", web1, prefix + "other/web-1/0"},
		{"web-1", web1, registrar.Key{Prefix: prefix, Job: "demo", Host: "web-2", Slot: 0}.HoldKey()},
		{"sdwriter", reader, prefix + "demo/web-1/5"},
	} {
		if _, err := tc.cli.Put(ctx, tc.key, `{"address":"127.0.0.1:1"}`); !errors.Is(err, rpctypes.ErrPermissionDenied) {
			t.Errorf("%s writing %s: %v, want permission denied", tc.who, tc.key, err)
		}
	}
	if _, err := web1.Delete(ctx, prefix, clientv3.WithPrefix()); !errors.Is(err, rpctypes.ErrPermissionDenied) {
		t.Errorf("web-1 deleting every registration: %v, want permission denied", err)
	}
	// What web-1 may do, it can: its own slot's key and hold.
	if _, err := web1.Put(ctx, prefix+"demo/web-1/7", `{"address":"127.0.0.1:2"}`); err != nil {
		t.Errorf("web-1 writing its own key: %v", err)
	}
	e.waitFileAddrs("demo", []string{addr, "127.0.0.1:2"}, 30*time.Second)
}
