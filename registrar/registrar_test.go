package registrar_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"

	"github.com/workersd/workersd/internal/embedetcd"
	"github.com/workersd/workersd/internal/etcdclient"
	"github.com/workersd/workersd/internal/testing/etcdtest"
	"github.com/workersd/workersd/internal/testing/metrictest"
	"github.com/workersd/workersd/internal/testing/poll"
	"github.com/workersd/workersd/registrar"
)

const testTTL = 2 * time.Second

func newRegistrar(t testing.TB, cli *clientv3.Client, job, host string, port int, reg prometheus.Registerer) *registrar.Registrar {
	t.Helper()
	return newRegistrarHold(t, cli, job, host, port, reg, 0)
}

// newRegistrarHold is newRegistrar with a SlotHold (0: the default).
func newRegistrarHold(t testing.TB, cli *clientv3.Client, job, host string, port int, reg prometheus.Registerer, hold time.Duration) *registrar.Registrar {
	t.Helper()
	r, err := registrar.New(registrar.Config{
		Client:   cli,
		Job:      job,
		Host:     host,
		TTL:      testTTL,
		SlotHold: hold,
		Value:    registrar.Value{Address: fmt.Sprintf("127.0.0.1:%d", port), PID: os.Getpid()},
		Metrics:  metricsOn(t, reg),
	})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return r
}

// metricsOn are registrar metrics registered on reg as the agent and
// package worker register them (nil for a nil reg), one set per reg.
func metricsOn(t testing.TB, reg prometheus.Registerer) *registrar.Metrics {
	t.Helper()
	if reg == nil {
		return nil
	}
	metricsMu.Lock()
	defer metricsMu.Unlock()
	if m, ok := metricsByReg[reg]; ok {
		return m
	}
	m := registrar.NewMetrics(prometheus.WrapRegistererWithPrefix("workersd_registrar_", reg))
	if err := m.Register(); err != nil {
		t.Fatal(err)
	}
	metricsByReg[reg] = m
	return m
}

var (
	metricsMu    sync.Mutex
	metricsByReg = map[prometheus.Registerer]*registrar.Metrics{}
)

func register(t testing.TB, r *registrar.Registrar) {
	t.Helper()
	r.Register(context.Background())
	t.Cleanup(func() { _ = r.Deregister(context.Background()) })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := r.WaitRegistered(ctx); err != nil {
		t.Fatalf("WaitRegistered: %v", err)
	}
}

// keys returns key -> lease of everything under prefix.
func keys(t testing.TB, cli *clientv3.Client, prefix string) map[string]int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, prefix, clientv3.WithPrefix())
	if err != nil {
		t.Fatalf("get %s: %v", prefix, err)
	}
	out := map[string]int64{}
	for _, kv := range resp.Kvs {
		out[string(kv.Key)] = kv.Lease
	}
	return out
}

func TestRegisterThenDeregisterRemovesKeyAtOnce(t *testing.T) {
	etcd := etcdtest.Start(t)
	cli := etcd.Client(t)
	reg := prometheus.NewRegistry()
	r := newRegistrar(t, cli, "api", "web-1", 4000, reg)
	register(t, r)

	st := r.State()
	if !st.Registered || st.Slot != 0 || st.Key != "/workersd/v1/api/web-1/0" || st.LeaseID == 0 {
		t.Fatalf("state after register: %+v", st)
	}
	resp, err := cli.Get(context.Background(), st.Key)
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("key %s not in etcd: %v %v", st.Key, resp, err)
	}
	got, err := registrar.Decode(registrar.DefaultPrefix, resp.Kvs[0].Key, resp.Kvs[0].Value)
	if err != nil {
		t.Fatalf("stored registration does not decode: %v", err)
	}
	if got.Address != "127.0.0.1:4000" || got.Job != "api" || got.Host != "web-1" || got.Slot != 0 || got.PID != os.Getpid() || got.StartedAt.IsZero() {
		t.Fatalf("stored registration: %+v", got)
	}
	if clientv3.LeaseID(resp.Kvs[0].Lease) != st.LeaseID {
		t.Fatalf("key on lease %x, state says %x", resp.Kvs[0].Lease, st.LeaseID)
	}
	if v := metrictest.Gathered(t, reg, "workersd_registrar_registrations", "state", "registered"); v != 1 {
		t.Fatalf("registered gauge = %v, want 1", v)
	}

	if err := r.Deregister(context.Background()); err != nil {
		t.Fatalf("Deregister: %v", err)
	}
	// At once: the very next read must miss the key, and the lease is gone
	// rather than left to expire.
	if k := keys(t, cli, registrar.DefaultPrefix); len(k) != 0 {
		t.Fatalf("keys after Deregister: %v", k)
	}
	ttl, err := cli.TimeToLive(context.Background(), st.LeaseID)
	if err != nil || ttl.TTL != -1 {
		t.Fatalf("lease %x after Deregister: ttl=%v err=%v, want revoked (-1)", st.LeaseID, ttl, err)
	}
	if st := r.State(); st.Registered {
		t.Fatalf("state after Deregister: %+v", st)
	}
}

// With holds off (the rule before slot holds), freed slots are reused at
// once; concurrent claims still give distinct lowest slots.
func TestConcurrentRegistrarsGetDistinctLowestSlots(t *testing.T) {
	etcd := etcdtest.Start(t)
	cli := etcd.Client(t)
	const n, rounds = 16, 20
	for round := 0; round < rounds; round++ {
		rs := make([]*registrar.Registrar, n)
		var wg sync.WaitGroup
		for i := range rs {
			rs[i] = newRegistrarHold(t, cli, "pool", "h", 5000+i, nil, -1)
		}
		for _, r := range rs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				r.Register(context.Background())
			}()
		}
		wg.Wait()
		slots := make([]int, 0, n)
		for _, r := range rs {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			if err := r.WaitRegistered(ctx); err != nil {
				t.Fatalf("round %d: %v", round, err)
			}
			cancel()
			slots = append(slots, r.State().Slot)
		}
		sort.Ints(slots)
		for i, s := range slots {
			if s != i {
				t.Fatalf("round %d: slots %v, want 0..%d each once", round, slots, n-1)
			}
		}
		if k := keys(t, cli, registrar.DefaultPrefix); len(k) != n {
			t.Fatalf("round %d: %d keys in etcd, want %d", round, len(k), n)
		}
		if round == rounds-1 {
			// A worker started after slot 3 was freed takes slot 3.
			for _, r := range rs {
				if r.State().Slot == 3 {
					if err := r.Deregister(context.Background()); err != nil {
						t.Fatal(err)
					}
				}
			}
			late := newRegistrarHold(t, cli, "pool", "h", 6000, nil, -1)
			register(t, late)
			if s := late.State().Slot; s != 3 {
				t.Fatalf("late registrar got slot %d, want the freed slot 3", s)
			}
			rs = append(rs, late)
		}
		for _, r := range rs {
			if err := r.Deregister(context.Background()); err != nil {
				t.Fatalf("round %d: Deregister: %v", round, err)
			}
		}
		if k := keys(t, cli, registrar.DefaultPrefix); len(k) != 0 {
			t.Fatalf("round %d: keys left after Deregister: %v", round, k)
		}
	}
}

// A freed slot stays held for SlotHold after its key is gone, whether the
// registration was revoked or its lease expired, so the next worker takes
// another slot; after the hold, the lowest slot is reused.
func TestFreedSlotIsHeldThenReused(t *testing.T) {
	etcd := etcdtest.Start(t)
	cli := etcd.Client(t)
	const hold = 2 * time.Second
	holdPrefix := registrar.HoldPrefix(registrar.DefaultPrefix)
	holdKey := func(slot int) string {
		return registrar.Key{Prefix: registrar.DefaultPrefix, Job: "held", Host: "h", Slot: slot}.HoldKey()
	}

	a := newRegistrarHold(t, cli, "held", "h", 7000, nil, hold)
	register(t, a)
	b := newRegistrarHold(t, cli, "held", "h", 7001, nil, hold)
	register(t, b)
	if a.State().Slot != 0 || b.State().Slot != 1 {
		t.Fatalf("slots %d and %d, want 0 and 1", a.State().Slot, b.State().Slot)
	}
	if k := keys(t, cli, holdPrefix); len(k) != 2 || k[holdKey(0)] != int64(a.State().HoldLeaseID) {
		t.Fatalf("holds %v, want slots 0 and 1, slot 0 on a's hold lease %x", k, a.State().HoldLeaseID)
	}

	// Graceful stop: the key goes at once, the hold stays.
	if err := a.Deregister(context.Background()); err != nil {
		t.Fatal(err)
	}
	gone := time.Now()
	c := newRegistrarHold(t, cli, "held", "h", 7002, nil, hold)
	register(t, c)
	if s := c.State().Slot; s != 2 {
		t.Fatalf("a worker started during the hold got slot %d, want 2 (0 is held, 1 is live)", s)
	}
	// The hold outlives the key by at least SlotHold, then expires.
	poll.Until(t, 3*(testTTL+hold), func() bool {
		_, held := keys(t, cli, holdPrefix)[holdKey(0)]
		return !held
	}, "the hold of slot 0 did not expire")
	if held := time.Since(gone); held < hold {
		t.Fatalf("slot 0 was held %s after its key went, want at least %s", held, hold)
	}
	d := newRegistrarHold(t, cli, "held", "h", 7003, nil, hold)
	register(t, d)
	if s := d.State().Slot; s != 0 {
		t.Fatalf("a worker started after the hold got slot %d, want the freed slot 0", s)
	}

	// Lease expiry (a killed worker): the key expires after the TTL, the
	// hold at least SlotHold after that.
	st := b.State()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := b.Detach(ctx); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, 2*testTTL, func() bool {
		_, ok := keys(t, cli, registrar.DefaultPrefix)[st.Key]
		return !ok
	}, "the detached key did not expire")
	gone = time.Now()
	e := newRegistrarHold(t, cli, "held", "h", 7004, nil, hold)
	register(t, e)
	if s := e.State().Slot; s == 1 {
		t.Fatal("a worker took slot 1 while it was held after its lease expired")
	}
	poll.Until(t, 3*(testTTL+hold), func() bool {
		_, held := keys(t, cli, holdPrefix)[holdKey(1)]
		return !held
	}, "the hold of slot 1 did not expire")
	if held := time.Since(gone); held < hold {
		t.Fatalf("slot 1 was held %s after its key expired, want at least %s", held, hold)
	}
}

// TestHelperRegistrarProcess is the child of TestKilledProcessDisappearsWithinTTL.
func TestHelperRegistrarProcess(t *testing.T) {
	ep := os.Getenv("WORKERSD_TEST_CHILD_ETCD")
	if ep == "" {
		return // not the child
	}
	cli, err := etcdclient.New([]string{ep}, clientv3.Config{})
	if err != nil {
		t.Fatal(err)
	}
	r := newRegistrar(t, cli, "child", "h", 7000, nil)
	r.Register(context.Background())
	if err := r.WaitRegistered(context.Background()); err != nil {
		t.Fatal(err)
	}
	fmt.Printf("registered %s\n", r.State().Key)
	select {} // until killed
}

func TestKilledProcessDisappearsWithinTTL(t *testing.T) {
	etcd := etcdtest.Start(t)
	cli := etcd.Client(t)
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperRegistrarProcess$", "-test.v")
	cmd.Env = append(os.Environ(), "WORKERSD_TEST_CHILD_ETCD="+etcd.Endpoint())
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	lines := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if strings.HasPrefix(sc.Text(), "registered ") {
				lines <- sc.Text()
			}
		}
	}()
	select {
	case l := <-lines:
		t.Logf("child: %s", l)
	case <-time.After(30 * time.Second):
		t.Fatal("child did not register")
	}
	if k := keys(t, cli, registrar.DefaultPrefix+"child/"); len(k) != 1 {
		t.Fatalf("child keys: %v", k)
	}
	if err := cmd.Process.Kill(); err != nil { // SIGKILL: no chance to revoke
		t.Fatal(err)
	}
	took := poll.Until(t, testTTL+2*time.Second, func() bool {
		return len(keys(t, cli, registrar.DefaultPrefix+"child/")) == 0
	}, "killed child's key still in etcd")
	t.Logf("key gone %s after SIGKILL (TTL %s)", took, testTTL)
}

// startFleet registers n workers for one (job, host) on one client each.
func startFleet(t *testing.T, etcd *etcdtest.Server, n int) []*registrar.Registrar {
	t.Helper()
	rs := make([]*registrar.Registrar, n)
	for i := range rs {
		rs[i] = newRegistrar(t, etcd.Client(t), "fleet", "h", 8000+i, nil)
		register(t, rs[i])
	}
	return rs
}

// assertExactlyOneKeyEach checks that every registrar is registered and that
// etcd holds exactly one key per registrar, on that registrar's lease.
func exactlyOneKeyEach(t *testing.T, cli *clientv3.Client, rs []*registrar.Registrar) bool {
	t.Helper()
	k := keys(t, cli, registrar.DefaultPrefix)
	if len(k) != len(rs) {
		return false
	}
	for _, r := range rs {
		st := r.State()
		if !st.Registered || k[st.Key] != int64(st.LeaseID) {
			return false
		}
	}
	return true
}

func TestSurvivesEtcdRestartAndWipe(t *testing.T) {
	etcd := etcdtest.Start(t)
	cli := etcd.Client(t)
	rs := startFleet(t, etcd, 4)

	for _, tc := range []struct {
		name  string
		again func()
	}{
		{"restart on same data", etcd.Restart},
		{"wiped (new cluster)", etcd.Wipe},
	} {
		etcd.Stop()
		stopped := time.Now()
		// Each registrar notices the loss once its lease's TTL passes
		// without an answer: a few seconds, and on a machine loaded to
		// several times its cores (scripts/stress beside a cold build) it
		// took over 20s twice in 90 runs; the deadline bounds a hang, not
		// the speed...
		var states string
		poll.Until(t, 60*time.Second, func() bool {
			states = ""
			for _, r := range rs {
				if st := r.State(); st.Registered {
					states += fmt.Sprintf("\n%+v", st)
				}
			}
			return states == ""
		}, "%s: registrars still claim to be registered without etcd:%s", tc.name, poll.Latest(&states))
		// ...and the outage itself is the scenario: three TTLs in all.
		if rest := 3*testTTL - time.Since(stopped); rest > 0 {
			time.Sleep(rest)
		}
		tc.again()
		took := poll.Until(t, testTTL+time.Second, func() bool { return exactlyOneKeyEach(t, cli, rs) },
			"%s: registrations not back with exactly one key each: %v", tc.name, keys(t, cli, registrar.DefaultPrefix))
		t.Logf("%s: all back %s after etcd answered", tc.name, took)
		// And they stay exactly one each (no late duplicate from an old lease).
		time.Sleep(testTTL)
		if !exactlyOneKeyEach(t, cli, rs) {
			t.Fatalf("%s: duplicate or missing keys after settling: %v", tc.name, keys(t, cli, registrar.DefaultPrefix))
		}
	}
}

func TestBackAfterExternalRevokeOrDelete(t *testing.T) {
	etcd := etcdtest.Start(t)
	cli := etcd.Client(t)
	reg := prometheus.NewRegistry()
	r := newRegistrar(t, cli, "api", "h", 4100, reg)
	register(t, r)
	ctx := context.Background()

	before := r.State()
	if _, err := cli.Revoke(ctx, before.LeaseID); err != nil {
		t.Fatal(err)
	}
	took := poll.Until(t, 2*time.Second, func() bool {
		st := r.State()
		return st.Registered && st.LeaseID != before.LeaseID && len(keys(t, cli, st.Key)) == 1
	}, "not back after the lease was revoked from outside")
	if st := r.State(); st.Slot != before.Slot {
		t.Fatalf("came back on slot %d, want its previous slot %d", st.Slot, before.Slot)
	}
	t.Logf("back %s after external revoke", took)

	before = r.State()
	if _, err := cli.Delete(ctx, before.Key); err != nil {
		t.Fatal(err)
	}
	took = poll.Until(t, 2*time.Second, func() bool {
		st := r.State()
		return st.Registered && st.Registrations > before.Registrations && len(keys(t, cli, st.Key)) == 1
	}, "not back after the key was deleted from outside")
	t.Logf("back %s after external delete", took)

	// Someone else takes the key: the registrar must not fight over it but
	// claim another slot.
	before = r.State()
	if _, err := cli.Put(ctx, before.Key, `{"address":"127.0.0.1:9999"}`); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, 2*time.Second, func() bool {
		st := r.State()
		return st.Registered && st.Slot != before.Slot
	}, "not re-registered on another slot after the key was overwritten")
	k := keys(t, cli, registrar.DefaultPrefix)
	if len(k) != 2 || k[before.Key] != 0 {
		t.Fatalf("after overwrite: keys %v, want the foreign key untouched plus ours", k)
	}
	if v := metrictest.Gathered(t, reg, "workersd_registrar_reregistrations_total"); v != 3 {
		t.Fatalf("reregistrations_total = %v, want 3", v)
	}
}

func TestRegistersOnceEtcdAppears(t *testing.T) {
	addr := etcdtest.FreeAddr(t)
	cli, err := etcdclient.New([]string{addr}, clientv3.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	r := newRegistrar(t, cli, "late", "h", 4200, nil)
	start := time.Now()
	r.Register(context.Background()) // must not block on the missing etcd
	if d := time.Since(start); d > time.Second {
		t.Fatalf("Register blocked %s with etcd down", d)
	}
	defer r.Deregister(context.Background())
	// The first attempt gives up after its operation timeout (2s here).
	poll.Until(t, 10*time.Second, func() bool { return r.State().LastError != nil }, "no error recorded while etcd is down")

	srv, err := embedetcd.Start(embedetcd.Config{Dir: t.TempDir(), ClientAddr: addr, PeerAddr: etcdtest.FreeAddr(t), UnsafeNoFsync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	took := poll.Until(t, testTTL+time.Second, func() bool { return r.State().Registered }, "not registered after etcd started")
	t.Logf("registered %s after etcd started", took)
	// Deregister while etcd is up: a server with open streams closes slowly.
	if err := r.Deregister(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func TestNewRejectsBadInputNamingTheField(t *testing.T) {
	etcd := etcdtest.Start(t)
	cli := etcd.Client(t)
	good := func() registrar.Config {
		return registrar.Config{Client: cli, Job: "api", Host: "web-1", TTL: 5 * time.Second,
			Value: registrar.Value{Address: "10.0.0.5:4000", Labels: map[string]string{"version": "1.2"}}}
	}
	cases := []struct {
		name  string
		mod   func(*registrar.Config)
		field string
	}{
		{"empty job", func(c *registrar.Config) { c.Job = "" }, "job"},
		{"job with slash", func(c *registrar.Config) { c.Job = "a/b" }, "job"},
		{"job with space", func(c *registrar.Config) { c.Job = "a b" }, "job"},
		{"host with slash", func(c *registrar.Config) { c.Host = "h/1" }, "host"},
		{"host with space", func(c *registrar.Config) { c.Host = "h 1" }, "host"},
		{"empty host", func(c *registrar.Config) { c.Host = "" }, "host"},
		{"label __x", func(c *registrar.Config) { c.Value.Labels = map[string]string{"__x": "1"} }, "labels.__x"},
		{"label job", func(c *registrar.Config) { c.Value.Labels = map[string]string{"job": "1"} }, "labels.job"},
		{"label instance", func(c *registrar.Config) { c.Value.Labels = map[string]string{"instance": "1"} }, "labels.instance"},
		{"label host", func(c *registrar.Config) { c.Value.Labels = map[string]string{"host": "1"} }, "labels.host"},
		{"label worker", func(c *registrar.Config) { c.Value.Labels = map[string]string{"worker": "1"} }, "labels.worker"},
		{"invalid label name", func(c *registrar.Config) { c.Value.Labels = map[string]string{"1bad-name": "1"} }, "labels.1bad-name"},
		{"non-numeric port", func(c *registrar.Config) { c.Value.Address = "10.0.0.5:http" }, "address"},
		{"port out of range", func(c *registrar.Config) { c.Value.Address = "10.0.0.5:65536" }, "address"},
		{"port zero", func(c *registrar.Config) { c.Value.Address = "10.0.0.5:0" }, "address"},
		{"no port", func(c *registrar.Config) { c.Value.Address = "10.0.0.5" }, "address"},
		{"ttl below etcd minimum", func(c *registrar.Config) { c.TTL = 1500 * time.Millisecond }, "ttl"},
		{"bad scheme", func(c *registrar.Config) { c.Value.Scheme = "ftp" }, "scheme"},
		{"relative metrics path", func(c *registrar.Config) { c.Value.MetricsPath = "metrics" }, "metrics_path"},
		{"no client", func(c *registrar.Config) { c.Client = nil }, "client"},
		{"bad prefix", func(c *registrar.Config) { c.Prefix = "workersd" }, "prefix"},
	}
	if _, err := registrar.New(good()); err != nil {
		t.Fatalf("the good config is refused: %v", err)
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := good()
			tc.mod(&c)
			_, err := registrar.New(c)
			var fe *registrar.FieldError
			if !errors.As(err, &fe) {
				t.Fatalf("New: %v, want a *FieldError", err)
			}
			if fe.Field != tc.field || !strings.Contains(err.Error(), tc.field) {
				t.Fatalf("error %q names field %q, want %q", err, fe.Field, tc.field)
			}
		})
	}
}

func TestNoGoroutineLeftAfterDeregister(t *testing.T) {
	etcd := etcdtest.Start(t)
	// etcd starts serving clients in the background after it reports ready;
	// one request first, so its goroutines are in the baseline.
	keys(t, etcd.Client(t), "/")
	ignore := goleak.IgnoreCurrent()
	cli, err := etcdclient.New([]string{etcd.Endpoint()}, clientv3.Config{})
	if err != nil {
		t.Fatal(err)
	}
	r := newRegistrar(t, cli, "leak", "h", 4300, nil)
	r.Register(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := r.WaitRegistered(ctx); err != nil {
		t.Fatal(err)
	}
	if err := r.Deregister(ctx); err != nil {
		t.Fatal(err)
	}
	cli.Close()
	goleak.VerifyNone(t, ignore)
}

func TestResumeAdoptsARegistrationInsteadOfDuplicatingIt(t *testing.T) {
	etcd := etcdtest.Start(t)
	cli := etcd.Client(t)
	started := time.Now().UTC().Truncate(time.Second)
	cfg := registrar.Config{Client: cli, Job: "agent", Host: "h", TTL: testTTL,
		Value: registrar.Value{Address: "127.0.0.1:4400", PID: 77, StartedAt: started}}

	// The first process registers and dies without revoking: Detach stops
	// the loop but leaves the lease to live out its TTL.
	first, err := registrar.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	first.Register(context.Background())
	if err := first.WaitRegistered(context.Background()); err != nil {
		t.Fatal(err)
	}
	old := first.State()
	if err := first.Detach(context.Background()); err != nil {
		t.Fatal(err)
	}

	cfg.Resume = registrar.Resume{Key: old.Key, Lease: old.LeaseID, HoldLease: old.HoldLeaseID}
	second, err := registrar.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	register(t, second)
	if st := second.State(); st.Key != old.Key || st.LeaseID != old.LeaseID {
		t.Fatalf("resumed as %s on lease %x, want %s on %x", st.Key, st.LeaseID, old.Key, old.LeaseID)
	}
	// Kept alive by the new owner well past the TTL, and still one key.
	time.Sleep(testTTL + time.Second)
	if k := keys(t, cli, registrar.DefaultPrefix); len(k) != 1 || k[old.Key] != int64(old.LeaseID) {
		t.Fatalf("keys after resume: %v", k)
	}

	// A resume whose lease is gone claims the same slot anew.
	if err := second.Deregister(context.Background()); err != nil {
		t.Fatal(err)
	}
	third, err := registrar.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	register(t, third)
	if st := third.State(); st.Key != old.Key || st.LeaseID == old.LeaseID {
		t.Fatalf("resume of a revoked lease: %+v, want slot %s on a new lease", st, old.Key)
	}

	cfg.Resume = registrar.Resume{Key: "/workersd/v1/other/h/0"}
	if _, err := registrar.New(cfg); err == nil || !strings.Contains(err.Error(), "resume.key") {
		t.Fatalf("resume of another job's key: %v", err)
	}
}

func TestDetachLeavesTheKeyAndChangedSignals(t *testing.T) {
	etcd := etcdtest.Start(t)
	cli := etcd.Client(t)
	r := newRegistrar(t, cli, "detach", "h", 4500, nil)
	changed := r.Changed()
	r.Register(context.Background())
	select {
	case <-changed:
	case <-time.After(10 * time.Second):
		t.Fatal("Changed not closed after the registration")
	}
	if err := r.WaitRegistered(context.Background()); err != nil {
		t.Fatal(err)
	}
	st := r.State()
	if err := r.Detach(context.Background()); err != nil {
		t.Fatal(err)
	}
	if k := keys(t, cli, registrar.DefaultPrefix); k[st.Key] != int64(st.LeaseID) {
		t.Fatalf("Detach removed the key: %v", k)
	}
	// Nobody keeps the lease alive any more: the key expires by itself.
	poll.Until(t, testTTL+2*time.Second, func() bool { return len(keys(t, cli, registrar.DefaultPrefix)) == 0 },
		"detached key did not expire")
}
