package etcdhealth

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/workersd/workersd/internal/embedetcd"
	"github.com/workersd/workersd/internal/etcdclient"
	"github.com/workersd/workersd/internal/testing/etcdtest"
	"github.com/workersd/workersd/internal/testing/logtest"
	"github.com/workersd/workersd/internal/testing/metrictest"
	"github.com/workersd/workersd/internal/testing/nospacetest"
	"github.com/workersd/workersd/internal/testing/poll"
)

type logBuffer struct{ logtest.Buffer }

func (l *logBuffer) logger() hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{Name: "etcdhealth", Output: l, Level: hclog.Info})
}

func newReporter(t *testing.T, cfg Config) (*Reporter, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	cfg.Metrics = NewMetrics(reg)
	if err := cfg.Metrics.Register(); err != nil {
		t.Fatal(err)
	}
	r, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return r, reg
}

func check(t *testing.T, r *Reporter) Snapshot {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return r.Check(ctx)
}

// A member's status: sizes, quota, version, leadership, no alarm; the
// metrics say the same.
func TestStatusOfAMember(t *testing.T) {
	etcd := etcdtest.Start(t)
	cli := etcd.Client(t)
	r, reg := newReporter(t, Config{Client: cli})
	if s := r.Snapshot(); !s.CheckedAt.IsZero() || len(s.Endpoints) != 1 || s.Endpoints[0].Error == "" {
		t.Errorf("before the first check: %+v", s)
	}
	s := check(t, r)
	if len(s.Endpoints) != 1 {
		t.Fatalf("endpoints %+v", s.Endpoints)
	}
	e := s.Endpoints[0]
	if e.Endpoint != etcd.Endpoint() || e.Error != "" || e.DBSizeBytes <= 0 || e.DBSizeInUseBytes <= 0 || e.DBSizeInUseBytes > e.DBSizeBytes ||
		e.QuotaBytes != embedetcd.DefaultQuotaBytes || !strings.HasPrefix(e.Version, "3.") || !e.Leader || e.MemberID == "" || e.LeaderID != e.MemberID {
		t.Errorf("status %+v", e)
	}
	if len(s.Alarms) != 0 || s.AlarmsError != "" || s.CheckedAt.IsZero() {
		t.Errorf("snapshot %+v", s)
	}
	for name, want := range map[string]float64{
		"etcd_endpoint_up": 1, "etcd_db_size_bytes": float64(e.DBSizeBytes), "etcd_db_size_in_use_bytes": float64(e.DBSizeInUseBytes),
		"etcd_db_quota_bytes": embedetcd.DefaultQuotaBytes,
	} {
		if got := metrictest.Gathered(t, reg, name, "endpoint", etcd.Endpoint()); got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
	for _, a := range []string{"NOSPACE", "CORRUPT"} {
		if got := metrictest.Gathered(t, reg, "etcd_alarm_active", "alarm", a); got != 0 {
			t.Errorf("etcd_alarm_active{alarm=%q} = %v", a, got)
		}
	}
}

// An endpoint that does not answer is reported as such, logged once, and
// its sizes are not kept as if current; the others are still reported.
func TestAnEndpointDown(t *testing.T) {
	etcd := etcdtest.Start(t)
	cli := etcd.Client(t)
	dead := etcdtest.FreeAddr(t)
	var logs logBuffer
	r, reg := newReporter(t, Config{Client: cli, Endpoints: []string{etcd.Endpoint(), dead}, Timeout: 500 * time.Millisecond, Logger: logs.logger()})
	check(t, r)
	s := check(t, r)
	if len(s.Endpoints) != 2 || s.Endpoints[0].Error != "" || s.Endpoints[1].Error == "" || s.Endpoints[1].DBSizeBytes != 0 {
		t.Fatalf("endpoints %+v", s.Endpoints)
	}
	if got := metrictest.Gathered(t, reg, "etcd_endpoint_up", "endpoint", dead); got != 0 {
		t.Errorf("up of the dead endpoint: %v", got)
	}
	if n := strings.Count(logs.String(), "does not answer"); n != 1 {
		t.Errorf("%d log lines of the dead endpoint over two checks, want 1:\n%s", n, logs.String())
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "etcd_db_size_bytes" && len(mf.GetMetric()) != 1 {
			t.Errorf("etcd_db_size_bytes has %d series, want the live endpoint's only", len(mf.GetMetric()))
		}
	}
}

// Issue 23, acceptance 1 and issue 21, acceptance 2 (the reporter's part):
// a member at its quota raises NOSPACE; the reporter shows it in its
// snapshot and metrics and logs it once with what to do; after the
// runbook's compaction, defragmentation and disarm, the alarm clears (one
// log line) and writes work again.
func TestNoSpaceAlarm(t *testing.T) {
	srv, err := embedetcd.Start(embedetcd.Config{
		Dir: filepath.Join(t.TempDir(), "etcd"), ClientAddr: etcdtest.FreeAddr(t), PeerAddr: etcdtest.FreeAddr(t), UnsafeNoFsync: true,
		QuotaBackendBytes: 4 << 20,
		Maintenance:       embedetcd.Maintenance{Interval: -1}, // no self-healing: the operator's procedure
	})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	cli, err := etcdclient.New([]string{srv.Endpoint()}, clientv3.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	var logs logBuffer
	r, reg := newReporter(t, Config{Client: cli, Logger: logs.logger()})

	n := nospacetest.Fill(t, cli, "/fill/", 1000)
	s := check(t, r)
	check(t, r)
	if len(s.Alarms) != 1 || s.Alarms[0].Alarm != "NOSPACE" || s.Alarms[0].MemberID != s.Endpoints[0].MemberID ||
		!strings.Contains(s.Alarms[0].Action, "etcdctl alarm disarm") || s.Alarms[0].Since.IsZero() {
		t.Fatalf("after %d puts to NOSPACE, alarms %+v", n, s.Alarms)
	}
	// etcd refuses a write that would take the file past the quota: the
	// file is within one write of it.
	if e := s.Endpoints[0]; e.QuotaBytes != 4<<20 || e.DBSizeBytes+2*nospacetest.ValueSize < 4<<20 || !strings.Contains(strings.Join(e.Errors, " "), "NOSPACE") {
		t.Errorf("status at NOSPACE: %+v", e)
	}
	if got := metrictest.Gathered(t, reg, "etcd_alarm_active", "alarm", "NOSPACE"); got != 1 {
		t.Errorf("etcd_alarm_active{alarm=NOSPACE} = %v", got)
	}
	if got, quota := metrictest.Gathered(t, reg, "etcd_db_size_bytes", "endpoint", srv.Endpoint()), metrictest.Gathered(t, reg, "etcd_db_quota_bytes", "endpoint", srv.Endpoint()); got+2*nospacetest.ValueSize < quota {
		t.Errorf("size %v not within a write of the quota %v at NOSPACE", got, quota)
	}
	if n := strings.Count(logs.String(), "[ERROR] etcdhealth: etcd alarm active: alarm=NOSPACE"); n != 1 {
		t.Errorf("%d log lines of the alarm over two checks, want 1:\n%s", n, logs.String())
	}
	if !strings.Contains(logs.String(), "etcd's database reached its quota") || !strings.Contains(logs.String(), "etcdctl defrag") {
		t.Errorf("the log line does not name the alarm and what to do:\n%s", logs.String())
	}

	nospacetest.Free(t, cli, "/fill/")
	s = check(t, r)
	check(t, r)
	if len(s.Alarms) != 0 || metrictest.Gathered(t, reg, "etcd_alarm_active", "alarm", "NOSPACE") != 0 {
		t.Errorf("after the runbook: alarms %+v", s.Alarms)
	}
	if e := s.Endpoints[0]; e.DBSizeBytes > 1<<20 {
		t.Errorf("after the runbook the database is still %d bytes", e.DBSizeBytes)
	}
	if n := strings.Count(logs.String(), "etcd alarm cleared"); n != 1 {
		t.Errorf("%d log lines of the alarm clearing, want 1:\n%s", n, logs.String())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := cli.Put(ctx, "/workersd/v1/api/web-1/0", `{"address":"10.0.0.1:9100"}`); err != nil {
		t.Errorf("a write after the runbook: %v", err)
	}
	t.Logf("log:\n%s", logs.String())
}

// CORRUPT is reported the same way, with its own advice; Run checks
// periodically and ends with its context.
func TestCorruptAlarmAndRun(t *testing.T) {
	etcd := etcdtest.Start(t)
	cli := etcd.Client(t)
	var logs logBuffer
	r, reg := newReporter(t, Config{Client: cli, Interval: 50 * time.Millisecond, Logger: logs.logger()})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); r.Run(ctx) }()
	defer func() { cancel(); <-done }()
	poll.Until(t, 10*time.Second, func() bool { return !r.Snapshot().CheckedAt.IsZero() }, "a first check")

	id := r.Snapshot().Endpoints[0].MemberID
	alarm := func(action pb.AlarmRequest_AlarmAction) {
		t.Helper()
		actx, acancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer acancel()
		st, err := cli.Status(actx, etcd.Endpoint())
		if err != nil {
			t.Fatal(err)
		}
		if _, err := pb.NewMaintenanceClient(cli.ActiveConnection()).Alarm(actx,
			&pb.AlarmRequest{Action: action, MemberID: st.Header.MemberId, Alarm: pb.AlarmType_CORRUPT}); err != nil {
			t.Fatal(err)
		}
	}
	alarm(pb.AlarmRequest_ACTIVATE)
	poll.Until(t, 10*time.Second, func() bool {
		s := r.Snapshot()
		return len(s.Alarms) == 1 && s.Alarms[0].Alarm == "CORRUPT" && s.Alarms[0].MemberID == id
	}, "CORRUPT in the snapshot")
	if got := metrictest.Gathered(t, reg, "etcd_alarm_active", "alarm", "CORRUPT"); got != 1 {
		t.Errorf("etcd_alarm_active{alarm=CORRUPT} = %v", got)
	}
	if !strings.Contains(logs.String(), "alarm=CORRUPT") || !strings.Contains(logs.String(), "replace that member") {
		t.Errorf("log:\n%s", logs.String())
	}
	alarm(pb.AlarmRequest_DEACTIVATE)
	poll.Until(t, 10*time.Second, func() bool { return len(r.Snapshot().Alarms) == 0 }, "CORRUPT cleared")
	poll.Until(t, 10*time.Second, func() bool { return strings.Contains(logs.String(), "etcd alarm cleared: alarm=CORRUPT") },
		"the clearing logged")
	if strings.Count(logs.String(), "etcd alarm active") != 1 {
		t.Errorf("the alarm logged more than once:\n%s", logs.String())
	}
}

func TestNewNeedsAClient(t *testing.T) {
	if _, err := New(Config{}); err == nil {
		t.Error("New without a client")
	}
}

// With authentication on, a user that may only read the registrations
// (docs/ETCD.md's sdwriter role) gets the status and the alarms: etcd asks
// only for a valid user.
func TestReadOnlyUser(t *testing.T) {
	etcd := etcdtest.Start(t)
	admin := etcd.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, step := range []func() error{
		func() error { _, err := admin.UserAdd(ctx, "root", "s3cret"); return err },
		func() error { _, err := admin.UserGrantRole(ctx, "root", "root"); return err },
		func() error { _, err := admin.RoleAdd(ctx, "reader"); return err },
		func() error {
			_, err := admin.RoleGrantPermission(ctx, "reader", "/workersd/", clientv3.GetPrefixRangeEnd("/workersd/"), clientv3.PermissionType(clientv3.PermRead))
			return err
		},
		func() error { _, err := admin.UserAdd(ctx, "sdwriter", "pw"); return err },
		func() error { _, err := admin.UserGrantRole(ctx, "sdwriter", "reader"); return err },
		func() error { _, err := admin.AuthEnable(ctx); return err },
	} {
		if err := step(); err != nil {
			t.Fatal(err)
		}
	}
	cli, err := etcdclient.New([]string{etcd.Endpoint()}, clientv3.Config{Username: "sdwriter", Password: "pw"})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	r, _ := newReporter(t, Config{Client: cli})
	s := check(t, r)
	if s.AlarmsError != "" || s.Endpoints[0].Error != "" || s.Endpoints[0].DBSizeBytes <= 0 {
		t.Errorf("as a read-only user: %+v", s)
	}
}
