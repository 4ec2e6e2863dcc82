// Package nospacetest brings a real etcd to its quota and back, for the
// tests of what reports and survives the NOSPACE alarm: Fill writes until
// etcd refuses for lack of space, Free does what docs/RUNBOOK.md tells an
// operator to do (as etcdctl does it).
package nospacetest

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// ValueSize is the size of each value Fill puts.
const ValueSize = 100 << 10

// Fill puts values of ValueSize under prefix until etcd refuses one for
// lack of space, and returns how many it put. It fails the test if etcd
// does not refuse within max puts. Give max room: etcd compares its quota
// with the database file as last committed (every 100 ms), so on a busy
// machine it accepts well past the quota before it refuses (callers give
// 1000: 100 MB at most, 12 times an 8 MiB quota).
func Fill(t testing.TB, cli *clientv3.Client, prefix string, max int) int {
	t.Helper()
	value := strings.Repeat("x", ValueSize)
	for i := range max {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, err := cli.Put(ctx, fmt.Sprintf("%s%05d", prefix, i), value)
		cancel()
		if errors.Is(err, rpctypes.ErrNoSpace) {
			return i
		}
		if err != nil {
			t.Fatalf("put %d: %v", i, err)
		}
	}
	t.Fatalf("%d puts of %d bytes and etcd has not refused one for lack of space", max, ValueSize)
	return 0
}

// Free deletes the keys under prefix, compacts to the current revision,
// defragments every endpoint of cli and disarms every alarm: the runbook's
// `etcdctl del --prefix`, `etcdctl compact`, `etcdctl defrag --cluster`
// and `etcdctl alarm disarm`.
func Free(t testing.TB, cli *clientv3.Client, prefix string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	del, err := cli.Delete(ctx, prefix, clientv3.WithPrefix())
	if err != nil {
		t.Fatalf("deletions are allowed under NOSPACE: %v", err)
	}
	if _, err := cli.Compact(ctx, del.Header.Revision, clientv3.WithCompactPhysical()); err != nil && !errors.Is(err, rpctypes.ErrCompacted) {
		t.Fatalf("compact: %v", err)
	}
	for _, e := range cli.Endpoints() {
		if _, err := cli.Defragment(ctx, e); err != nil {
			t.Fatalf("defragment %s: %v", e, err)
		}
	}
	if _, err := cli.AlarmDisarm(ctx, &clientv3.AlarmMember{}); err != nil {
		t.Fatalf("alarm disarm: %v", err)
	}
}
