// Package etcdhealth reports the health of the etcd cluster a component
// uses: per endpoint, the database's size, the size in use and the quota
// (etcd's Maintenance Status), and the cluster's active alarms (AlarmList),
// as Prometheus metrics, log lines and a snapshot for a status page.
//
// etcd at its quota raises the NOSPACE alarm and refuses every write but
// deletions until an operator frees space and disarms it; a member whose
// data differs from the others' raises CORRUPT. Either stops every
// registration, and nothing else in workersd would say why. The reporter
// logs once when an alarm becomes active, with what to do, and once when it
// clears. It works alike for sdwriter's embedded etcd and for a cluster,
// and knows nothing of the component that runs it.
//
// Like Prometheus' discovery, a Reporter does its work in Run(ctx), which
// owns its goroutines and returns when ctx ends.
package etcdhealth

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

const (
	// DefaultInterval is how often Run asks etcd.
	DefaultInterval = 15 * time.Second
	// DefaultTimeout bounds each request to etcd.
	DefaultTimeout = 5 * time.Second
)

// Config configures a Reporter.
type Config struct {
	// Client is the etcd client to ask; required.
	Client *clientv3.Client
	// Endpoints are the members whose status is asked, each on its own;
	// empty means Client.Endpoints().
	Endpoints []string
	// AlarmsOnly asks for the alarms only, one request a check, and for
	// no member's status: for a component that runs on every host of a
	// fleet (the host agent), whose status checks would add up.
	AlarmsOnly bool
	// Interval between checks in Run; 0 means DefaultInterval.
	Interval time.Duration
	// Timeout bounds each request; 0 means DefaultTimeout.
	Timeout time.Duration
	// Logger receives a line when an alarm becomes active or clears and
	// when an endpoint stops or starts answering; nil discards them.
	Logger hclog.Logger
	// Metrics are updated at each check; nil: none.
	Metrics *Metrics
}

// Snapshot is what the last check found.
type Snapshot struct {
	// CheckedAt is when the last check ended; zero before the first.
	CheckedAt time.Time        `json:"checked_at"`
	Endpoints []EndpointStatus `json:"endpoints"`
	// Alarms are the cluster's active alarms, by member and type.
	Alarms []Alarm `json:"alarms"`
	// AlarmsError is why the alarms could not be listed at the last
	// check ("" when they could); Alarms are then those of the check
	// before.
	AlarmsError string `json:"alarms_error,omitempty"`
}

// EndpointStatus is one member's answer to Status.
type EndpointStatus struct {
	Endpoint string `json:"endpoint"`
	// Error is why the member did not answer; the other fields are then
	// empty.
	Error    string `json:"error,omitempty"`
	MemberID string `json:"member_id,omitempty"`
	Version  string `json:"version,omitempty"`
	// Leader is whether this member is the leader; LeaderID is the
	// leader it knows ("" when none).
	Leader   bool   `json:"leader"`
	LeaderID string `json:"leader_id,omitempty"`
	// DBSizeBytes is the size of the database file (what the quota
	// counts), DBSizeInUseBytes the part of it in use: the rest is free
	// space that only defragmentation returns.
	DBSizeBytes      int64 `json:"db_size_bytes"`
	DBSizeInUseBytes int64 `json:"db_size_in_use_bytes"`
	// QuotaBytes is the member's quota; 0 when the member does not say
	// (etcd before 3.6).
	QuotaBytes int64 `json:"quota_bytes,omitempty"`
	// Errors are what the member reports about itself: no leader, alarms.
	Errors []string `json:"errors,omitempty"`
}

// Alarm is one active alarm of one member.
type Alarm struct {
	MemberID string `json:"member_id"`
	// Alarm is NOSPACE or CORRUPT.
	Alarm string `json:"alarm"`
	// Since is when this reporter first saw it active.
	Since time.Time `json:"since"`
	// Action says what to do about it.
	Action string `json:"action"`
}

// Actions says what to do about each alarm; the log line of an alarm that
// becomes active carries it.
var Actions = map[string]string{
	"NOSPACE": "etcd's database reached its quota: etcd refuses every write but deletions, so no worker can register. " +
		"Free space, then disarm: compact the history (`etcdctl compact <current revision>`), defragment every member (`etcdctl defrag --cluster`), " +
		"check that the database is well under the quota (`etcdctl endpoint status -w table`), then `etcdctl alarm disarm`; " +
		"if the data itself fills the quota, raise --quota-backend-bytes (docs/RUNBOOK.md)",
	"CORRUPT": "etcd found a member whose data differs from the others' and refuses writes: " +
		"replace that member (remove it, wipe its data directory, add it back so that it copies a healthy member's data), " +
		"then `etcdctl alarm disarm` (docs/RUNBOOK.md)",
}

// alarmName is the bounded name of an alarm type: NOSPACE, CORRUPT, or
// OTHER for a type this build does not know.
func alarmName(t pb.AlarmType) string {
	switch t {
	case pb.AlarmType_NOSPACE, pb.AlarmType_CORRUPT:
		return t.String()
	default:
		return "OTHER"
	}
}

// Reporter checks etcd's health; see the package comment.
type Reporter struct {
	cfg Config
	log hclog.Logger

	mu   sync.Mutex
	snap Snapshot
	// since is when each active alarm ("member/ALARM") was first seen.
	since map[string]time.Time
	// down is the endpoints whose last Status failed.
	down map[string]bool
}

// New returns a Reporter; it asks nothing until Run or Check.
func New(cfg Config) (*Reporter, error) {
	if cfg.Client == nil {
		return nil, errors.New("etcdhealth: no client")
	}
	if cfg.AlarmsOnly {
		cfg.Endpoints = nil
	} else if len(cfg.Endpoints) == 0 {
		cfg.Endpoints = cfg.Client.Endpoints()
	}
	if cfg.Interval <= 0 {
		cfg.Interval = DefaultInterval
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	log := cfg.Logger
	if log == nil {
		log = hclog.NewNullLogger()
	}
	r := &Reporter{cfg: cfg, log: log, since: map[string]time.Time{}, down: map[string]bool{}}
	r.snap.Alarms = []Alarm{}
	for _, e := range cfg.Endpoints {
		r.snap.Endpoints = append(r.snap.Endpoints, EndpointStatus{Endpoint: e, Error: "not checked yet"})
	}
	return r, nil
}

// Run checks at once, then every Interval, until ctx ends.
func (r *Reporter) Run(ctx context.Context) {
	t := time.NewTicker(r.cfg.Interval)
	defer t.Stop()
	for {
		r.Check(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Snapshot returns what the last check found.
func (r *Reporter) Snapshot() Snapshot {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.snap
	s.Endpoints = slices.Clone(s.Endpoints)
	s.Alarms = slices.Clone(s.Alarms)
	return s
}

// Check asks etcd now (each endpoint's Status at once, and the alarms),
// updates the metrics and the snapshot, logs what changed, and returns the
// new snapshot. Run calls it; calls must not overlap.
func (r *Reporter) Check(ctx context.Context) Snapshot {
	statuses := make([]EndpointStatus, len(r.cfg.Endpoints))
	var wg sync.WaitGroup
	for i, e := range r.cfg.Endpoints {
		wg.Go(func() { statuses[i] = r.status(ctx, e) })
	}
	alarms, alarmsErr := r.alarms(ctx)
	wg.Wait()
	if ctx.Err() != nil {
		return r.Snapshot() // ended meanwhile: what failed says nothing of etcd
	}

	now := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, st := range statuses {
		r.endpointChanged(st)
	}
	r.snap.CheckedAt = now
	r.snap.Endpoints = statuses
	r.snap.AlarmsError = ""
	if alarmsErr != nil {
		r.snap.AlarmsError = alarmsErr.Error()
		r.log.Debug("listing etcd's alarms failed", "error", alarmsErr)
	} else {
		r.alarmsChanged(alarms, now)
	}
	if m := r.cfg.Metrics; m != nil {
		m.update(r.snap)
	}
	s := r.snap
	s.Endpoints = slices.Clone(s.Endpoints)
	s.Alarms = slices.Clone(s.Alarms)
	return s
}

func (r *Reporter) status(ctx context.Context, endpoint string) EndpointStatus {
	ctx, cancel := context.WithTimeout(ctx, r.cfg.Timeout)
	defer cancel()
	resp, err := r.cfg.Client.Status(ctx, endpoint)
	if err != nil {
		return EndpointStatus{Endpoint: endpoint, Error: err.Error()}
	}
	st := EndpointStatus{
		Endpoint:         endpoint,
		Version:          resp.Version,
		DBSizeBytes:      resp.DbSize,
		DBSizeInUseBytes: resp.DbSizeInUse,
		QuotaBytes:       resp.DbSizeQuota,
		Errors:           resp.Errors,
	}
	if resp.Header != nil {
		st.MemberID = memberID(resp.Header.MemberId)
		st.Leader = resp.Leader != 0 && resp.Leader == resp.Header.MemberId
	}
	if resp.Leader != 0 {
		st.LeaderID = memberID(resp.Leader)
	}
	return st
}

func (r *Reporter) alarms(ctx context.Context) ([]*pb.AlarmMember, error) {
	ctx, cancel := context.WithTimeout(ctx, r.cfg.Timeout)
	defer cancel()
	resp, err := r.cfg.Client.AlarmList(ctx)
	if err != nil {
		return nil, err
	}
	return resp.Alarms, nil
}

func memberID(id uint64) string { return fmt.Sprintf("%x", id) }

// endpointChanged logs an endpoint that stops or starts answering.
func (r *Reporter) endpointChanged(st EndpointStatus) {
	failing := st.Error != ""
	if failing == r.down[st.Endpoint] {
		return
	}
	r.down[st.Endpoint] = failing
	if failing {
		r.log.Warn("etcd endpoint does not answer its status: its database size and alarms are unknown", "endpoint", st.Endpoint, "error", st.Error)
	} else {
		r.log.Info("etcd endpoint answers its status again", "endpoint", st.Endpoint)
	}
}

// alarmsChanged records the active alarms and logs each that became active
// or cleared since the last listing.
func (r *Reporter) alarmsChanged(list []*pb.AlarmMember, now time.Time) {
	active := map[string]Alarm{}
	for _, a := range list {
		if a.Alarm == pb.AlarmType_NONE {
			continue
		}
		al := Alarm{MemberID: memberID(a.MemberID), Alarm: alarmName(a.Alarm)}
		al.Action = Actions[al.Alarm]
		if al.Action == "" {
			al.Action = fmt.Sprintf("etcd raised the alarm %s, unknown to this build: see etcd's documentation, then `etcdctl alarm disarm`", a.Alarm)
		}
		key := al.MemberID + "/" + al.Alarm
		since, ok := r.since[key]
		if !ok {
			since = now
			r.since[key] = now
			r.log.Error("etcd alarm active", "alarm", al.Alarm, "member", al.MemberID, "action", al.Action)
		}
		al.Since = since
		active[key] = al
	}
	for key := range r.since {
		if _, ok := active[key]; !ok {
			member, alarm, _ := strings.Cut(key, "/")
			r.log.Info("etcd alarm cleared", "alarm", alarm, "member", member, "active_for", now.Sub(r.since[key]).Round(time.Second))
			delete(r.since, key)
		}
	}
	r.snap.Alarms = []Alarm{}
	for _, key := range slices.Sorted(maps.Keys(active)) {
		r.snap.Alarms = append(r.snap.Alarms, active[key])
	}
}
