package embedetcd_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/workersd/workersd/internal/embedetcd"
	"github.com/workersd/workersd/internal/etcdclient"
	"github.com/workersd/workersd/internal/testing/etcdtest"
	"github.com/workersd/workersd/internal/testing/logtest"
	"github.com/workersd/workersd/internal/testing/metrictest"
	"github.com/workersd/workersd/internal/testing/nospacetest"
	"github.com/workersd/workersd/internal/testing/poll"
	"github.com/workersd/workersd/registrar"
)

// start runs a member with c (ports, data directory and no fsync filled
// in) and a client of it, both closed when the test ends.
func start(t *testing.T, c embedetcd.Config) (*embedetcd.Server, *clientv3.Client) {
	t.Helper()
	c.Dir = filepath.Join(t.TempDir(), "etcd")
	c.ClientAddr, c.PeerAddr = etcdtest.FreeAddr(t), etcdtest.FreeAddr(t)
	c.UnsafeNoFsync = true
	srv, err := embedetcd.Start(c)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	cli, err := etcdclient.New([]string{srv.Endpoint()}, clientv3.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return srv, cli
}

func status(t *testing.T, cli *clientv3.Client) *clientv3.StatusResponse {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := cli.Status(ctx, cli.Endpoints()[0])
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// logBuffer is an hclog output the test reads.
type logBuffer struct{ logtest.Buffer }

func (l *logBuffer) logger() hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{Name: "etcd", Output: l, Level: hclog.Info})
}

// churn makes changes registration changes (each a put or a deletion of a
// key of the registrar's schema) as workers that restart over and over
// would under the agent's default, one lease per host: a worker's key is
// put on its host's lease, then replaced by its slot's hold on the host's
// hold lease, which goes when the hold ends. Four changes (three
// revisions, the "3 revisions per restart") per restart, from
// workers goroutines at once on 8 hosts. It returns how many restarts it
// made.
func churn(t *testing.T, cli *clientv3.Client, changes, workers int) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var leases, holdLeases [8]clientv3.LeaseID
	for h := range leases {
		for _, l := range []*clientv3.LeaseID{&leases[h], &holdLeases[h]} {
			g, err := cli.Grant(ctx, 60)
			if err != nil {
				t.Fatal(err)
			}
			*l = g.ID
		}
	}
	restarts := (changes + 3) / 4
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Go(func() {
			h := w % len(leases)
			k := registrar.Key{Prefix: registrar.DefaultPrefix, Job: "api", Host: "web-" + strconv.Itoa(h), Slot: w / len(leases)}
			for next.Add(1) <= int64(restarts) {
				if err := restart(cli, k, leases[h], holdLeases[h]); err != nil {
					errs <- fmt.Errorf("%s: %w", k, err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	return restarts
}

// restart is one worker's lifetime in etcd: its claim, its release onto
// the slot's hold, and the hold's end.
func restart(cli *clientv3.Client, k registrar.Key, lease, holdLease clientv3.LeaseID) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	v, err := registrar.Value{Address: "10.1.2.3:" + strconv.Itoa(40000+k.Slot), MetricsPath: registrar.OwnMetricsPath(os.Getpid()),
		PID: 100000 + k.Slot, StartedAt: time.Now(), Labels: map[string]string{"version": "1.4.2"}}.Encode()
	if err != nil {
		return err
	}
	key, hold := k.String(), k.HoldKey()
	claim, err := cli.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0), clientv3.Compare(clientv3.CreateRevision(hold), "=", 0)).
		Then(clientv3.OpPut(key, string(v), clientv3.WithLease(lease))).Commit()
	if err != nil {
		return err
	}
	if !claim.Succeeded {
		return errors.New("slot taken")
	}
	if _, err := cli.Txn(ctx).Then(clientv3.OpDelete(key), clientv3.OpPut(hold, "", clientv3.WithLease(holdLease))).Commit(); err != nil {
		return err
	}
	_, err = cli.Delete(ctx, hold) // the hold ends
	return err
}

// Issue 23, acceptance 1: at least 20,000 registration changes through the
// embedded etcd, compacting with a short retention, leave its database
// under a bound, while the same churn without compaction grows it by about
// 540 bytes a restart for ever (2.5 MB for these 20,000 changes, 13.1 MB
// for 100,000). The bound: 1 MiB. With a retention of R the history held
// is at most 2R of changes (the periodic compactor's cycle), here 0.2 s;
// the file's high-water mark stays near the live data plus that history:
// 0.43 MB after 20,000 changes, 0.50 MB after 100,000 (docs/SCALING.md).
// WORKERSD_CHURN_CHANGES and WORKERSD_CHURN_RETENTION (-1s: no
// compaction) change the run, for the figures.
func TestChurnStaysBounded(t *testing.T) {
	const bound = 1 << 20
	changes := 20000
	if s := os.Getenv("WORKERSD_CHURN_CHANGES"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 20000 {
			t.Fatalf("WORKERSD_CHURN_CHANGES=%q: want a number of at least 20000", s)
		}
		changes = n
	}
	reg := prometheus.NewRegistry()
	_, cli := start(t, embedetcd.Config{
		CompactionRetention: retention(t),
		Maintenance:         embedetcd.Maintenance{Interval: 200 * time.Millisecond, MinSize: 1 << 20},
		Metrics:             metricsOn(t, reg),
	})
	first := status(t, cli)

	// The size while churning, sampled aside.
	var peak atomic.Int64
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			select {
			case <-stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			st, err := cli.Status(ctx, cli.Endpoints()[0])
			cancel()
			if err == nil && st.DbSize > peak.Load() {
				peak.Store(st.DbSize)
			}
		}
	}()
	began := time.Now()
	restarts := churn(t, cli, changes, 32)
	took := time.Since(began)
	close(stop)
	<-sampled
	last := status(t, cli)
	if last.DbSize > peak.Load() {
		peak.Store(last.DbSize)
	}
	revs := last.Header.Revision - first.Header.Revision
	t.Logf("%d restarts, %d changes, %d revisions in %s (%.0f changes/s); database %d bytes at start, peak %d, end %d (%d in use); %v defragmentations",
		restarts, 4*restarts, revs, took.Round(time.Millisecond), float64(4*restarts)/took.Seconds(),
		first.DbSize, peak.Load(), last.DbSize, last.DbSizeInUse, metrictest.Gathered(t, reg, "embedded_etcd_defrags_total"))
	if revs < int64(3*restarts) {
		t.Fatalf("%d revisions for %d restarts: the churn did not happen", revs, restarts)
	}
	if p := peak.Load(); p > bound {
		t.Errorf("the database reached %d bytes, over the bound of %d", p, bound)
	}
	// Without compaction the history alone would be about 505 bytes a
	// restart: the bound means something only if the churn exceeds it.
	if uncompacted := int64(restarts) * 505; uncompacted < 2*bound {
		t.Errorf("%d restarts would grow an uncompacted database by only %d bytes: make more changes", restarts, uncompacted)
	}
	// And history older than the retention is gone.
	poll.Until(t, 10*time.Second, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err := cli.Get(ctx, "x", clientv3.WithRev(first.Header.Revision+1))
		return errors.Is(err, rpctypes.ErrCompacted)
	}, "the revisions of the churn's start compacted")
}

func retention(t *testing.T) time.Duration {
	if s := os.Getenv("WORKERSD_CHURN_RETENTION"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	return 100 * time.Millisecond
}

func alarms(t *testing.T, cli *clientv3.Client) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := cli.AlarmList(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, a := range resp.Alarms {
		out = append(out, a.Alarm.String())
	}
	return out
}

// A file that compaction left mostly free is defragmented by the member
// itself, counted and logged, and shrinks.
func TestDefragmentsAMostlyFreeFile(t *testing.T) {
	var logs logBuffer
	reg := prometheus.NewRegistry()
	_, cli := start(t, embedetcd.Config{
		Log:                 logs.logger(),
		CompactionRetention: 100 * time.Millisecond,
		Maintenance:         embedetcd.Maintenance{Interval: 100 * time.Millisecond, MinSize: 2 << 20},
		Metrics:             metricsOn(t, reg),
	})
	value := strings.Repeat("x", 100<<10)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for i := range 40 {
		if _, err := cli.Put(ctx, fmt.Sprintf("/big/%02d", i), value); err != nil {
			t.Fatal(err)
		}
	}
	var full int64
	poll.Until(t, 10*time.Second, func() bool {
		full = status(t, cli).DbSize
		return full >= 4<<20
	}, "40 values of 100 KB in the database's file")
	if _, err := cli.Delete(ctx, "/big/", clientv3.WithPrefix()); err != nil {
		t.Fatal(err)
	}
	// Registrations go on meanwhile: etcd counts the pages a compaction
	// freed as free from the next write on.
	var last string
	poll.Until(t, 30*time.Second, func() bool {
		if _, err := cli.Put(ctx, "/workersd/v1/api/web-1/0", `{"address":"10.0.0.1:9100"}`); err != nil {
			t.Fatal(err)
		}
		st := status(t, cli)
		last = fmt.Sprintf("%d bytes, %d in use, %v defragmentations", st.DbSize, st.DbSizeInUse, metrictest.Gathered(t, reg, "embedded_etcd_defrags_total"))
		return st.DbSize < 1<<20 && metrictest.Gathered(t, reg, "embedded_etcd_defrags_total") >= 1
	}, "the file defragmented, from %d bytes: %s", full, poll.Latest(&last))
	if !strings.Contains(logs.String(), "defragmented the embedded etcd's database") {
		t.Errorf("no log line of the defragmentation:\n%s", logs.String())
	}
	t.Logf("%d bytes, then %s", full, last)
}

// Issue 23, acceptance 1 (the embedded etcd's side): at its quota, etcd
// raises NOSPACE and refuses writes; once the keys that filled it are
// deleted, compaction and the member's own defragmentation shrink the file
// and the member disarms its alarm: writes work again with no operator.
func TestNoSpaceHealsOnceSpaceIsFreed(t *testing.T) {
	var logs logBuffer
	reg := prometheus.NewRegistry()
	srv, cli := start(t, embedetcd.Config{
		Log:                 logs.logger(),
		QuotaBackendBytes:   4 << 20,
		CompactionRetention: 100 * time.Millisecond,
		Maintenance:         embedetcd.Maintenance{Interval: 100 * time.Millisecond},
		Metrics:             metricsOn(t, reg),
	})
	if srv.Quota() != 4<<20 {
		t.Errorf("Quota() = %d", srv.Quota())
	}
	n := nospacetest.Fill(t, cli, "/fill/", 1000)
	if got := alarms(t, cli); fmt.Sprint(got) != "[NOSPACE]" {
		t.Fatalf("after %d puts and a refusal, alarms %v", n, got)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// Refused while the alarm is on, even once space is freed.
	del, err := cli.Delete(ctx, "/fill/", clientv3.WithPrefix())
	if err != nil {
		t.Fatalf("deletions are allowed under NOSPACE: %v", err)
	}
	// etcd's periodic compactor compacts at revisions it sampled a
	// retention earlier and, under load, was seen to lag past the test's
	// 90 s (in use stayed at the quota); compacting here leaves the
	// member's own defragmentation and disarm, what this tests.
	if _, err := cli.Compact(ctx, del.Header.Revision); err != nil {
		t.Fatalf("compact: %v", err)
	}
	var last string
	// Generous: the member's own compaction, defragmentation and disarm
	// come within a few of its 100 ms checks, but a loaded CI machine once
	// took more than 30 s; its log says which step was late.
	poll.Until(t, 90*time.Second, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err := cli.Put(ctx, "/after", "x")
		st := status(t, cli)
		last = fmt.Sprintf("put: %v; %d bytes, %d in use, alarms %v; the member's log:\n%s", err, st.DbSize, st.DbSizeInUse, alarms(t, cli), logs.String())
		return err == nil
	}, "writes working again: %s", poll.Latest(&last))
	if got := alarms(t, cli); len(got) != 0 {
		t.Errorf("alarms %v after the disarm", got)
	}
	if d := metrictest.Gathered(t, reg, "embedded_etcd_nospace_disarms_total"); d != 1 {
		t.Errorf("%v disarms counted, want 1", d)
	}
	if !strings.Contains(logs.String(), "disarmed the embedded etcd's NOSPACE alarm") {
		t.Errorf("no log line of the disarm:\n%s", logs.String())
	}
	t.Logf("%d puts of 100 KB to NOSPACE at a 4 MiB quota; then %s; %v defragmentations", n, last, metrictest.Gathered(t, reg, "embedded_etcd_defrags_total"))
	t.Logf("log:\n%s", logs.String())
}

// etcd's warnings reach Log through hclog, with their fields; the warnings
// every start gives by design do not, nor the errors of a stop.
func TestEtcdWarningsReachTheLog(t *testing.T) {
	var logs logBuffer
	srv, cli := start(t, embedetcd.Config{Log: logs.logger()})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := cli.Put(ctx, "/k", "v", clientv3.WithLease(0x1234)); !errors.Is(err, rpctypes.ErrLeaseNotFound) {
		t.Fatalf("put on a lease that does not exist: %v", err)
	}
	var last string
	poll.Until(t, 10*time.Second, func() bool {
		last = logs.String()
		return strings.Contains(last, "[WARN]  etcd: failed to apply request") && strings.Contains(last, "lease not found")
	}, "etcd's warning of the failed request in the log:\n%s", poll.Latest(&last))
	for _, expected := range []string{"single port", "simple token", "default name"} {
		if strings.Contains(last, expected) {
			t.Errorf("the log has etcd's start-up warning about %s:\n%s", expected, last)
		}
	}
	if strings.Contains(last, "[INFO]") {
		t.Errorf("etcd's info lines reach the log:\n%s", last)
	}
	cli.Close()
	srv.Close()
	if all := logs.String(); strings.Contains(all, "[ERROR]") || strings.Count(all, "[WARN]") != strings.Count(last, "[WARN]") {
		t.Errorf("the stop logged errors or warnings:\n%s", all[len(last):])
	}
}

// metricsOn are the member's metrics registered on reg.
func metricsOn(t *testing.T, reg prometheus.Registerer) *embedetcd.Metrics {
	t.Helper()
	m := embedetcd.NewMetrics(reg)
	if err := m.Register(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Unregister)
	return m
}
