package etcdsd

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/prometheus/discovery/targetgroup"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/workersd/workersd/internal/testing/etcdtest"
	"github.com/workersd/workersd/internal/testing/metrictest"
	"github.com/workersd/workersd/internal/testing/poll"
	"github.com/workersd/workersd/registrar"
)

// recorder is a Sink that keeps the state a consumer would build, and checks
// that sources in keep are never removed.
type recorder struct {
	t    *testing.T
	keep map[string]bool

	mu      sync.Mutex
	groups  map[string]*targetgroup.Group
	updates [][]*targetgroup.Group
	changed chan struct{}
}

func newRecorder(t *testing.T) *recorder {
	return &recorder{t: t, keep: map[string]bool{}, groups: map[string]*targetgroup.Group{}, changed: make(chan struct{})}
}

func (r *recorder) Update(groups []*targetgroup.Group, seen time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if seen.IsZero() || time.Since(seen) > time.Minute {
		r.t.Errorf("update with implausible arrival time %v", seen)
	}
	for _, g := range groups {
		if len(g.Targets) == 0 {
			if r.keep[g.Source] {
				r.t.Errorf("%s removed, but it never left etcd", g.Source)
			}
			delete(r.groups, g.Source)
		} else {
			r.groups[g.Source] = g
		}
	}
	r.updates = append(r.updates, groups)
	close(r.changed)
	r.changed = make(chan struct{})
}

// addresses returns "key=address" for every group, sorted.
func (r *recorder) snapshot() (map[string]string, int, <-chan struct{}) {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := map[string]string{}
	for src, g := range r.groups {
		out[strings.TrimPrefix(src, testPrefix)] = string(g.Targets[0]["__address__"])
	}
	return out, len(r.updates), r.changed
}

// waitFor waits until the recorded state satisfies ok.
func (r *recorder) waitFor(t *testing.T, what string, ok func(map[string]string) bool) {
	t.Helper()
	deadline := time.After(30 * time.Second)
	for {
		state, _, changed := r.snapshot()
		if ok(state) {
			return
		}
		select {
		case <-changed:
		case <-deadline:
			t.Fatalf("%s: never happened; state %v", what, state)
		}
	}
}

func (r *recorder) waitState(t *testing.T, want map[string]string) {
	t.Helper()
	r.waitFor(t, fmt.Sprintf("state %v", want), func(s map[string]string) bool { return fmt.Sprint(s) == fmt.Sprint(want) })
}

type fixture struct {
	etcd *etcdtest.Server
	cli  *clientv3.Client
	d    *Discoverer
	rec  *recorder
	m    *Metrics
	done chan struct{}
}

func start(t *testing.T, etcd *etcdtest.Server, opts Options) *fixture {
	t.Helper()
	f := &fixture{etcd: etcd, cli: etcd.Client(t), rec: newRecorder(t), m: NewMetrics(nil), done: make(chan struct{})}
	opts.Metrics = f.m
	opts.Logger = hclog.New(&hclog.LoggerOptions{Name: t.Name(), Level: hclog.Debug, Output: testWriter{t}})
	d, err := New(etcd.Client(t), opts)
	if err != nil {
		t.Fatal(err)
	}
	f.d = d
	ctx, cancel := context.WithCancel(context.Background())
	go func() { d.RunSink(ctx, f.rec); close(f.done) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-f.done:
		case <-time.After(10 * time.Second):
			t.Error("RunSink did not return after its context was canceled")
		}
	})
	return f
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

func put(t *testing.T, cli *clientv3.Client, key, address string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := cli.Put(ctx, testPrefix+key, string(value(t, registrar.Value{Address: address}))); err != nil {
		t.Fatal(err)
	}
}

func putRaw(t *testing.T, cli *clientv3.Client, key, val string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := cli.Put(ctx, key, val); err != nil {
		t.Fatal(err)
	}
}

func del(t *testing.T, cli *clientv3.Client, key string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := cli.Delete(ctx, testPrefix+key); err != nil {
		t.Fatal(err)
	}
}

func TestListPagesAndWatch(t *testing.T) {
	etcd := etcdtest.Start(t)
	cli := etcd.Client(t)
	want := map[string]string{}
	for i := range 10 {
		key := fmt.Sprintf("job/host/%d", i)
		put(t, cli, key, fmt.Sprintf("10.0.0.%d:80", i+1))
		want[key] = fmt.Sprintf("10.0.0.%d:80", i+1)
	}
	putRaw(t, cli, "/workersd/v1", "outside the prefix")
	putRaw(t, cli, "/workersd/v10/x/y/0", "outside the prefix")

	f := start(t, etcd, Options{PageSize: 3})
	select {
	case <-f.d.Synced():
	case <-time.After(30 * time.Second):
		t.Fatal("never synced")
	}
	state, updates, _ := f.rec.snapshot()
	if updates != 1 || fmt.Sprint(state) != fmt.Sprint(want) {
		t.Fatalf("first update (%d updates): %v, want %v", updates, state, want)
	}
	if !f.d.Reachable() || metrictest.Value(f.m.Reachable) != 1 {
		t.Error("not reachable after a listing")
	}

	put(t, f.cli, "job/host/10", "10.0.0.11:80")
	want["job/host/10"] = "10.0.0.11:80"
	del(t, f.cli, "job/host/0")
	delete(want, "job/host/0")
	f.rec.waitState(t, want)
	if got := metrictest.Value(f.m.Registrations); got != 10 {
		t.Errorf("registrations gauge = %v, want 10", got)
	}
}

// An empty prefix is a complete, empty set: the first update comes anyway.
func TestEmptyPrefixSyncs(t *testing.T) {
	f := start(t, etcdtest.Start(t), Options{Prefix: "/empty/"})
	select {
	case <-f.d.Synced():
	case <-time.After(30 * time.Second):
		t.Fatal("never synced")
	}
	if state, updates, _ := f.rec.snapshot(); updates != 1 || len(state) != 0 {
		t.Fatalf("%d updates, state %v", updates, state)
	}
}

// blockingSink blocks its second Update until released, so that events
// queue up behind it.
type blockingSink struct {
	*recorder
	calls   int
	blocked chan struct{}
	release chan struct{}
}

func (s *blockingSink) Update(groups []*targetgroup.Group, seen time.Time) {
	s.calls++
	if s.calls == 2 {
		close(s.blocked)
		<-s.release
	}
	s.recorder.Update(groups, seen)
}

// Events that queue up while the sink is busy are handed over together, and
// a lone event is handed over at once, not after a timer.
func TestBurstIsCoalesced(t *testing.T) {
	etcd := etcdtest.Start(t)
	cli := etcd.Client(t)
	d, err := New(etcd.Client(t), Options{})
	if err != nil {
		t.Fatal(err)
	}
	sink := &blockingSink{recorder: newRecorder(t), blocked: make(chan struct{}), release: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { d.RunSink(ctx, sink); close(done) }()
	defer func() { cancel(); <-done }()
	<-d.Synced()

	start := time.Now()
	put(t, cli, "job/host/0", "h:1") // a lone event
	<-sink.blocked
	if delay := time.Since(start); delay > time.Second {
		t.Errorf("a lone event took %s to reach the sink", delay)
	}
	want := map[string]string{"job/host/0": "h:1"}
	for i := 1; i <= 50; i++ {
		key := fmt.Sprintf("job/host/%d", i)
		put(t, cli, key, fmt.Sprintf("h:%d", i+1))
		want[key] = fmt.Sprintf("h:%d", i+1)
	}
	close(sink.release)
	sink.waitState(t, want)
	// Sync, the lone event, then the 50 queued puts: in one update, or a
	// few if some were still on their way from etcd when the sink returned.
	_, updates, _ := sink.snapshot()
	if updates-2 > 5 {
		t.Errorf("50 queued events took %d updates", updates-2)
	}
	t.Logf("50 queued events in %d updates", updates-2)
}

// Events that arrive together are handed over together.
func TestTransactionIsOneUpdate(t *testing.T) {
	f := start(t, etcdtest.Start(t), Options{})
	<-f.d.Synced()
	var ops []clientv3.Op
	want := map[string]string{}
	for i := range 100 {
		key := fmt.Sprintf("job/host/%d", i)
		ops = append(ops, clientv3.OpPut(testPrefix+key, string(value(t, registrar.Value{Address: fmt.Sprintf("h:%d", i+1)}))))
		want[key] = fmt.Sprintf("h:%d", i+1)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := f.cli.Txn(ctx).Then(ops...).Commit(); err != nil {
		t.Fatal(err)
	}
	f.rec.waitState(t, want)
	if _, updates, _ := f.rec.snapshot(); updates != 2 {
		t.Errorf("one transaction of 100 puts took %d updates after the first, want 1", updates-1)
	}
}

func TestGarbageIsSkippedAndCounted(t *testing.T) {
	f := start(t, etcdtest.Start(t), Options{})
	<-f.d.Synced()
	garbage := map[string]string{
		testPrefix + "job/host/1":   "{not json",
		testPrefix + "job/host/2":   `{"address":"h:2","extra":1}`,
		testPrefix + "job/host/3":   `{"address":"h:3","labels":{"bad-name":"x"}}`,
		testPrefix + "job/host/4":   `{"address":"h:4","labels":{"__address__":"evil:1"}}`,
		testPrefix + "job/host/5":   `{"address":"h:5","labels":{"v":"` + strings.Repeat("x", 1<<20) + `"}}`,
		testPrefix + "job/host/6":   "{\"address\":\"h:6\",\"labels\":{\"v\":\"\xff\"}}",
		testPrefix + "job/host":     `{"address":"h:7"}`,
		testPrefix + "job/host/7/x": `{"address":"h:8"}`,
		testPrefix + "job/host/07":  `{"address":"h:9"}`,
	}
	for k, v := range garbage {
		putRaw(t, f.cli, k, v)
	}
	put(t, f.cli, "job/host/0", "h:1")
	f.rec.waitState(t, map[string]string{"job/host/0": "h:1"})
	total := 0.0
	for _, r := range invalidReasons {
		total += metrictest.Value(f.m.InvalidSkipped.WithLabelValues(r))
	}
	if total != float64(len(garbage)) {
		t.Errorf("invalid registrations counted: %v, want %d", total, len(garbage))
	}
	for _, r := range []string{"value", "labels", "key", "slot"} {
		if metrictest.Value(f.m.Invalid.WithLabelValues(r)) == 0 {
			t.Errorf("no invalid registration with reason %q", r)
		}
	}
}

func TestDuplicateAddressNewestWins(t *testing.T) {
	f := start(t, etcdtest.Start(t), Options{})
	<-f.d.Synced()
	put(t, f.cli, "job/host/0", "h:1")
	f.rec.waitState(t, map[string]string{"job/host/0": "h:1"})
	put(t, f.cli, "job/host/1", "h:1")
	f.rec.waitState(t, map[string]string{"job/host/1": "h:1"})
	if got := metrictest.Value(f.m.Duplicates); got != 1 {
		t.Errorf("duplicates gauge = %v, want 1", got)
	}
	del(t, f.cli, "job/host/1")
	f.rec.waitState(t, map[string]string{"job/host/0": "h:1"})
}

// Stopped and restarted etcd: nothing is removed meanwhile, changes made
// after it is back arrive.
func TestEtcdStoppedAndRestarted(t *testing.T) {
	etcd := etcdtest.Start(t)
	f := start(t, etcd, Options{ProbeInterval: 200 * time.Millisecond, MaxBackoff: 500 * time.Millisecond})
	<-f.d.Synced()
	put(t, f.cli, "job/host/0", "h:1")
	f.rec.keep[testPrefix+"job/host/0"] = true
	f.rec.waitState(t, map[string]string{"job/host/0": "h:1"})

	etcd.Stop()
	poll.Until(t, 20*time.Second, func() bool { return !f.d.Reachable() }, "etcd stopped, but still reachable")
	_, updates, _ := f.rec.snapshot()
	time.Sleep(2 * time.Second) // an outage that lasts: nothing may be emitted
	if _, after, _ := f.rec.snapshot(); after != updates {
		t.Errorf("%d updates while etcd was down", after-updates)
	}
	etcd.Restart()
	put(t, f.cli, "job/host/1", "h:2")
	f.rec.waitState(t, map[string]string{"job/host/0": "h:1", "job/host/1": "h:2"})
	if !f.d.Reachable() {
		t.Error("not reachable after etcd came back")
	}
}

// A rebuilt etcd starts its revisions again; the watch would wait for ever
// on the old revision, so the probe must notice and list again.
func TestEtcdWiped(t *testing.T) {
	etcd := etcdtest.Start(t)
	f := start(t, etcd, Options{ProbeInterval: 200 * time.Millisecond, MaxBackoff: 500 * time.Millisecond})
	<-f.d.Synced()
	for i := range 20 { // push the revision well above the new cluster's
		put(t, f.cli, "job/host/0", fmt.Sprintf("h:%d", i+1))
	}
	put(t, f.cli, "job/host/1", "h:100")
	f.rec.waitState(t, map[string]string{"job/host/0": "h:20", "job/host/1": "h:100"})

	etcd.Wipe()
	put(t, f.cli, "job/host/2", "h:200")
	f.rec.waitState(t, map[string]string{"job/host/2": "h:200"})
	if metrictest.Value(f.m.Relists) < 1 {
		t.Error("no re-list counted")
	}
}

// The discovery.Discoverer interface: the first send is the complete set,
// Run returns when its context ends.
func TestRunSendsOnChannel(t *testing.T) {
	etcd := etcdtest.Start(t)
	cli := etcd.Client(t)
	if _, err := cli.Put(context.Background(), testPrefix+"j/h/0", string(value(t, registrar.Value{Address: "h:1"}))); err != nil {
		t.Fatal(err)
	}
	d, err := New(cli, Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	up := make(chan []*targetgroup.Group)
	done := make(chan struct{})
	go func() { d.Run(ctx, up); close(done) }()
	select {
	case groups := <-up:
		if len(groups) != 1 || groups[0].Source != testPrefix+"j/h/0" {
			t.Errorf("first send %v", groups)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("nothing sent")
	}
	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return")
	}
	select {
	case _, ok := <-up:
		if !ok {
			t.Error("Run closed its channel")
		}
	default:
	}
}
