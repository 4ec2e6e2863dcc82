package registrar_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/workersd/workersd/internal/testing/etcdtest"
	"github.com/workersd/workersd/internal/testing/poll"
	"github.com/workersd/workersd/registrar"
)

// hostLeases runs HostLeases (one lease for keys and one for holds), as a
// host agent does, until the returned stop (also at cleanup).
func hostLeases(t *testing.T, cli *clientv3.Client, resume, resumeHold clientv3.LeaseID) (leases *registrar.HostLeases, stop func()) {
	t.Helper()
	leases, err := registrar.NewHostLeases(registrar.LeasesConfig{Client: cli, TTL: testTTL, SlotHold: time.Second}, resume, resumeHold)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { leases.Run(ctx) })
	var once sync.Once
	stop = func() { once.Do(func() { cancel(); wg.Wait() }) }
	t.Cleanup(stop)
	return leases, stop
}

// keyLease and holdLease are the current leases of h's keys and holds.
func keyLease(h *registrar.HostLeases) clientv3.LeaseID  { k, _ := h.IDs(); return k }
func holdLease(h *registrar.HostLeases) clientv3.LeaseID { _, hl := h.IDs(); return hl }

func sharedRegistrar(t *testing.T, cli *clientv3.Client, port int, leases *registrar.HostLeases, resume registrar.Resume) *registrar.Registrar {
	t.Helper()
	r, err := registrar.New(registrar.Config{
		Client: cli, Job: "api", Host: "web-1", TTL: testTTL, SlotHold: time.Second,
		Value:  registrar.Value{Address: fmt.Sprintf("127.0.0.1:%d", port), PID: os.Getpid(), StartedAt: time.Unix(1e9, 0)},
		Leases: leases, Resume: resume,
	})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// Issue 13: registrations on a shared lease. Three workers' keys share one
// lease and their holds another; a deregistered worker's key goes at once
// and its hold moves onto a lease of its own that expires; the others stay.
// When the lease is lost, every registration claims again on a new one;
// when its keeper stops, they all expire after the TTL.
func TestSharedLease(t *testing.T) {
	etcd := etcdtest.Start(t)
	cli := etcd.Client(t)
	leases, stop := hostLeases(t, cli, 0, 0)
	var rs []*registrar.Registrar
	for i := range 3 {
		r := sharedRegistrar(t, cli, 9000+i, leases, registrar.Resume{})
		register(t, r)
		rs = append(rs, r)
	}
	ks := keys(t, cli, registrar.DefaultPrefix)
	hs := keys(t, cli, registrar.HoldPrefix(registrar.DefaultPrefix))
	if len(ks) != 3 || len(hs) != 3 {
		t.Fatalf("keys %v, holds %v; want 3 each", ks, hs)
	}
	for k, l := range ks {
		if clientv3.LeaseID(l) != keyLease(leases) {
			t.Errorf("%s on lease %x, want the shared %x", k, l, keyLease(leases))
		}
	}
	for k, l := range hs {
		if clientv3.LeaseID(l) != holdLease(leases) {
			t.Errorf("%s on lease %x, want the shared hold lease %x", k, l, holdLease(leases))
		}
	}

	// Deregister the worker of slot 1.
	gone := rs[1].State()
	if err := rs[1].Deregister(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, ok := keys(t, cli, registrar.DefaultPrefix)[gone.Key]; ok {
		t.Fatalf("%s still there after Deregister", gone.Key)
	}
	hk := registrar.Key{Prefix: registrar.DefaultPrefix, Job: "api", Host: "web-1", Slot: 1}.HoldKey()
	own := clientv3.LeaseID(keys(t, cli, hk)[hk])
	if own == 0 || own == holdLease(leases) {
		t.Fatalf("the hold of the deregistered slot is on lease %x, want one of its own", own)
	}
	ttl, err := cli.TimeToLive(context.Background(), own)
	if err != nil || ttl.TTL <= 0 || time.Duration(ttl.TTL)*time.Second > registrar.HoldWindow(testTTL, time.Second)+time.Second {
		t.Fatalf("the released hold's lease: %+v, %v", ttl, err)
	}
	poll.Until(t, 10*time.Second, func() bool {
		_, ok := keys(t, cli, hk)[hk]
		return !ok
	}, "the released hold expiring")
	if n := len(keys(t, cli, registrar.DefaultPrefix)); n != 2 {
		t.Fatalf("%d keys left, want the other 2", n)
	}

	// etcd loses the shared lease: both claim again, on a new one.
	old := keyLease(leases)
	if _, err := cli.Revoke(context.Background(), old); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, 15*time.Second, func() bool {
		ks := keys(t, cli, registrar.DefaultPrefix)
		if len(ks) != 2 {
			return false
		}
		for _, l := range ks {
			if clientv3.LeaseID(l) == old || clientv3.LeaseID(l) != keyLease(leases) {
				return false
			}
		}
		return rs[0].State().Registered && rs[2].State().Registered
	}, "both registrations again on a new shared lease")

	// The keeper stops (the agent dies): everything expires with the TTL.
	for _, r := range []*registrar.Registrar{rs[0], rs[2]} {
		if err := r.Detach(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	stop()
	poll.Until(t, 3*testTTL, func() bool { return len(keys(t, cli, registrar.DefaultPrefix)) == 0 }, "keys expiring with the shared lease")
}

// A restarted keeper resumes the shared leases, and its registrations keep
// their keys: no second slot, no new registration.
func TestSharedLeaseResume(t *testing.T) {
	etcd := etcdtest.Start(t)
	cli := etcd.Client(t)
	leases, stop := hostLeases(t, cli, 0, 0)
	r := sharedRegistrar(t, cli, 9100, leases, registrar.Resume{})
	register(t, r)
	st := r.State()
	if err := r.Detach(context.Background()); err != nil {
		t.Fatal(err)
	}
	stop()

	leases2, _ := hostLeases(t, cli, st.LeaseID, st.HoldLeaseID)
	r2 := sharedRegistrar(t, cli, 9100, leases2, registrar.Resume{Key: st.Key, Lease: st.LeaseID, HoldLease: st.HoldLeaseID})
	register(t, r2)
	st2 := r2.State()
	if st2.Key != st.Key || st2.LeaseID != st.LeaseID || st2.Registrations != 0 {
		t.Fatalf("after resume: %+v, want key %s on lease %x adopted", st2, st.Key, st.LeaseID)
	}
	// Beyond the TTL: still the one key, kept alive by the new keeper.
	time.Sleep(testTTL + time.Second)
	if ks := keys(t, cli, registrar.DefaultPrefix); len(ks) != 1 || clientv3.LeaseID(ks[st.Key]) != st.LeaseID {
		t.Fatalf("keys %v, want %s on %x alone", ks, st.Key, st.LeaseID)
	}
}

// Leases made for other settings than the registration's are refused: a
// host's leases without holds for a registration with holds (once "a
// shared lease without a shared hold lease"), another TTL or prefix.
func TestLeasesMustMatchTheRegistration(t *testing.T) {
	etcd := etcdtest.Start(t)
	cli := etcd.Client(t)
	for _, lc := range []registrar.LeasesConfig{
		{Client: cli, TTL: testTTL, SlotHold: -1},
		{Client: cli, TTL: 2 * testTTL, SlotHold: time.Second},
		{Client: cli, TTL: testTTL, SlotHold: time.Second, Prefix: "/other/"},
	} {
		leases, err := registrar.NewHostLeases(lc, 0, 0)
		if err != nil {
			t.Fatal(err)
		}
		cfg := registrar.Config{Client: cli, Job: "a", Host: "h", TTL: testTTL, SlotHold: time.Second,
			Value: registrar.Value{Address: "127.0.0.1:1"}, Leases: leases}
		_, err = registrar.New(cfg)
		var fe *registrar.FieldError
		if !errors.As(err, &fe) || fe.Field != "leases" {
			t.Errorf("New with leases for %+v: %v, want an error on field leases", lc, err)
		}
	}
}
