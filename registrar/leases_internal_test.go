package registrar

import (
	"context"
	"testing"
	"time"

	"github.com/workersd/workersd/internal/testing/etcdtest"
)

// While a grant waits for an etcd that is down, ID answers at once: the
// agent records it in its state file while answering a registration,
// which must not wait for etcd (it once took 2.5 s, the grant's timeout).
func TestSharedLeaseIDDoesNotWaitForAGrant(t *testing.T) {
	etcd := etcdtest.Start(t)
	cli := etcd.Client(t)
	lease := newSharedLease(cli, 2*time.Second, 0, nil)
	etcd.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	granting := make(chan error, 1)
	go func() {
		_, err := lease.acquire(ctx)
		granting <- err
	}()
	time.Sleep(100 * time.Millisecond) // let acquire reach the grant
	start := time.Now()
	if id := lease.ID(); id != 0 {
		t.Errorf("ID = %x with etcd down, want 0", int64(id))
	}
	if d := time.Since(start); d > 100*time.Millisecond {
		t.Errorf("ID took %s while a grant waited for etcd", d)
	}
	select {
	case err := <-granting:
		t.Fatalf("acquire returned %v before its context ended, with etcd down", err)
	default:
	}
	if err := <-granting; err == nil {
		t.Fatal("acquire granted a lease with etcd down")
	}
}
