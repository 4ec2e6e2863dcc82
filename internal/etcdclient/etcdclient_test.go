package etcdclient_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/workersd/workersd/internal/etcdclient"
	"github.com/workersd/workersd/internal/testing/etcdtest"
)

// A client with a user and password is returned at once when etcd cannot
// be reached, and works once it can: a worker started during an etcd
// outage starts, and registers when etcd is back.
func TestAuthenticatesWhenEtcdAnswers(t *testing.T) {
	etcd := etcdtest.Start(t)
	admin := etcd.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, step := range []func() error{
		func() error { _, err := admin.UserAdd(ctx, "root", "root-pw"); return err },
		func() error { _, err := admin.UserGrantRole(ctx, "root", "root"); return err },
		func() error { _, err := admin.UserAdd(ctx, "w", "w-pw"); return err },
		func() error { _, err := admin.RoleAdd(ctx, "w"); return err },
		func() error {
			_, err := admin.RoleGrantPermission(ctx, "w", "/w/", clientv3.GetPrefixRangeEnd("/w/"), clientv3.PermissionType(clientv3.PermReadWrite))
			return err
		},
		func() error { _, err := admin.UserGrantRole(ctx, "w", "w"); return err },
		func() error { _, err := admin.AuthEnable(ctx); return err },
	} {
		if err := step(); err != nil {
			t.Fatal(err)
		}
	}
	etcd.Stop()

	start := time.Now()
	cli, err := etcdclient.New([]string{etcd.Endpoint()}, clientv3.Config{Username: "w", Password: "w-pw", DialTimeout: 2 * time.Second})
	if err != nil {
		t.Fatalf("with etcd down: %v, want a client", err)
	}
	defer cli.Close()
	if took := time.Since(start); took > time.Second {
		t.Errorf("New took %v with etcd down; it must not wait for etcd", took)
	}
	short, scancel := context.WithTimeout(ctx, 300*time.Millisecond)
	if _, err := cli.Put(short, "/w/a", "1"); err == nil {
		t.Error("a Put succeeded with etcd down")
	}
	scancel()

	etcd.Restart()
	if _, err := cli.Put(ctx, "/w/a", "1"); err != nil {
		t.Fatalf("Put once etcd is back: %v", err)
	}
	if _, err := cli.Put(ctx, "/other", "1"); !errors.Is(err, rpctypes.ErrPermissionDenied) {
		t.Errorf("Put outside the user's keys: %v, want permission denied", err)
	}
	w := cli.Watch(ctx, "/w/", clientv3.WithPrefix())
	if _, err := cli.Put(ctx, "/w/b", "2"); err != nil {
		t.Fatal(err)
	}
	if resp := <-w; resp.Err() != nil || len(resp.Events) != 1 {
		t.Errorf("watch as the user: %v, %d events", resp.Err(), len(resp.Events))
	}

	bad, err := etcdclient.New([]string{etcd.Endpoint()}, clientv3.Config{Username: "w", Password: "wrong"})
	if err != nil {
		t.Fatal(err)
	}
	defer bad.Close()
	if _, err := bad.Put(ctx, "/w/a", "1"); !errors.Is(err, rpctypes.ErrAuthFailed) {
		t.Errorf("Put with a wrong password: %v, want authentication failed", err)
	}
}
