package registrar_test

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/workersd/workersd/internal/etcdclient"
	"github.com/workersd/workersd/internal/testing/etcdtest"
	"github.com/workersd/workersd/internal/testing/poll"
	"github.com/workersd/workersd/registrar"
)

// lostAnswer is a client of a real etcd whose first claim of a slot (a
// transaction that puts a registration key) is applied by etcd but whose
// answer never reaches the registrar: a connection lost at the wrong
// moment, or the claim's context ending while etcd applies it, as when a
// worker exits during its first claim. With wait, the call returns only
// when its context ends; otherwise it fails at once as unavailable.
func lostAnswer(t *testing.T, etcd *etcdtest.Server, wait bool) (*clientv3.Client, <-chan struct{}) {
	t.Helper()
	applied := make(chan struct{})
	var once sync.Once
	intercept := func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		err := invoker(ctx, method, req, reply, cc, opts...)
		txn, ok := req.(*pb.TxnRequest)
		if !ok || err != nil || !claims(txn) {
			return err
		}
		lose := false
		once.Do(func() { lose = true })
		if !lose {
			return nil
		}
		close(applied)
		if wait {
			<-ctx.Done()
			return ctx.Err()
		}
		return status.Error(codes.Unavailable, "test: connection lost after etcd applied the claim")
	}
	cli, err := etcdclient.New([]string{etcd.Endpoint()}, clientv3.Config{DialOptions: []grpc.DialOption{grpc.WithUnaryInterceptor(intercept)}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli, applied
}

// claims reports whether txn puts a registration's key: a slot claim.
func claims(txn *pb.TxnRequest) bool {
	for _, op := range txn.Success {
		if p := op.GetRequestPut(); p != nil && strings.HasPrefix(string(p.Key), registrar.DefaultPrefix) && len(p.Value) > 0 {
			return true
		}
	}
	return false
}

// Issue 21: a worker that exits during its first claim, whose answer is
// lost, leaked its key on the host's shared lease for good: the
// registration never recorded the key, so its removal removed nothing.
func TestClaimOfUnknownOutcomeIsRemovedOnDeregister(t *testing.T) {
	etcd := etcdtest.Start(t)
	check := etcd.Client(t)
	cli, applied := lostAnswer(t, etcd, true)
	leases, _ := hostLeases(t, cli, 0, 0)
	r := sharedRegistrar(t, cli, 9000, leases, registrar.Resume{})
	r.Register(context.Background())
	select {
	case <-applied:
	case <-time.After(10 * time.Second):
		t.Fatal("no claim reached etcd")
	}
	if ks := keys(t, check, registrar.DefaultPrefix); len(ks) != 1 {
		t.Fatalf("etcd holds %v after the claim; want its key", ks)
	}
	// The worker exits now, while the claim waits for its answer.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := r.Deregister(ctx); err != nil {
		t.Fatalf("Deregister: %v", err)
	}
	if ks := keys(t, check, registrar.DefaultPrefix); len(ks) != 0 {
		t.Fatalf("etcd still holds %v after Deregister: a phantom target for as long as the host lease lives", ks)
	}
	if st := r.State(); st.Removed == "" {
		t.Errorf("State.Removed empty; want the key removed (%+v)", st)
	}
	for k, l := range keys(t, check, registrar.HoldPrefix(registrar.DefaultPrefix)) {
		if clientv3.LeaseID(l) == holdLease(leases) {
			t.Errorf("hold %s still on the host's hold lease: it would hold the slot for ever", k)
		}
	}
}

// A claim whose answer was lost but which etcd applied is found on the
// next attempt and kept: one key, not a second slot beside the first.
func TestClaimOfUnknownOutcomeIsKeptNotDuplicated(t *testing.T) {
	etcd := etcdtest.Start(t)
	check := etcd.Client(t)
	cli, applied := lostAnswer(t, etcd, false)
	leases, _ := hostLeases(t, cli, 0, 0)
	r := sharedRegistrar(t, cli, 9000, leases, registrar.Resume{})
	register(t, r)
	<-applied
	st := r.State()
	ks := keys(t, check, registrar.DefaultPrefix)
	if len(ks) != 1 || st.Slot != 0 || st.Registrations != 1 {
		t.Fatalf("after a claim of unknown outcome: keys %v, state %+v; want one key, slot 0, one registration", ks, st)
	}
	poll.Until(t, 5*time.Second, func() bool { return r.State().Registered }, "not registered")
}
