package agent

import (
	"testing"

	"github.com/workersd/workersd/internal/leaktest"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Every goroutine has an owner that stops it and waits for it: none may
// outlive the tests (the etcd members and clients the tests start are
// stopped by then).
func TestMain(m *testing.M) { leaktest.VerifyTestMain(m) }

// hostLease and hostHoldLease are the host's current leases of keys and
// holds.
func (a *Agent) hostLease() clientv3.LeaseID {
	k, _ := a.host.IDs()
	return k
}

func (a *Agent) hostHoldLease() clientv3.LeaseID {
	_, h := a.host.IDs()
	return h
}
