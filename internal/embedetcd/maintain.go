package embedetcd

import (
	"context"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
)

// Maintenance is the member's own upkeep of its database, checked every
// Interval in a goroutine the Server owns (Close stops it), never on a
// client's request path:
//
//   - Defragmentation. Compaction frees pages inside the database file but
//     never shrinks it, and etcd's quota counts the file, free pages
//     included. When the file is at least MinSize and at least half of it
//     is free, the member defragments: it rewrites the pages in use into a
//     new file. etcd serves no request meanwhile, and the time taken grows
//     with the size in use (tens of milliseconds for a few MB here), so
//     above MaxInUse the member does not defragment online but logs, once,
//     how to do it offline.
//   - NOSPACE. When the database reached its quota, etcd raised the NOSPACE
//     alarm and refuses every write but deletions and compaction until the
//     alarm is disarmed. Under the alarm the member defragments once after
//     each compaction (which then only follows deletions: nothing else
//     writes), whatever the size in use says: etcd counts the pages a
//     compaction freed as in use until its next write, which the alarm
//     prevents. Once the file is back under 80 % of the quota, the member
//     disarms its own alarm and logs it, so that a one-host setup heals
//     without an operator. Above that, it stays armed: deleting keys or a
//     larger quota (--etcd.embed.quota-backend-bytes, taken at the next
//     start) is the operator's call.
type Maintenance struct {
	// Interval between checks; 0 means DefaultMaintenanceInterval, a
	// negative value disables the maintenance.
	Interval time.Duration
	// MinSize is the smallest file worth defragmenting; 0 means 64 MiB, or
	// a quarter of the quota when that is less.
	MinSize int64
	// MaxInUse bounds the size in use that is defragmented online, so the
	// pause stays short; 0 means 256 MiB.
	MaxInUse int64
}

const (
	// DefaultMaintenanceInterval is how often the database is checked.
	DefaultMaintenanceInterval = time.Minute
	defaultMinSize             = 64 << 20
	defaultMaxInUse            = 256 << 20
	// disarmBelow is the share of the quota (in tenths) under which a
	// NOSPACE alarm is disarmed: a margin, so that one more write does not
	// raise it again at once.
	disarmBelow = 8
)

func (m Maintenance) interval() time.Duration {
	if m.Interval == 0 {
		return DefaultMaintenanceInterval
	}
	return m.Interval
}

func (m Maintenance) minSize(quota int64) int64 {
	if m.MinSize > 0 {
		return m.MinSize
	}
	return min(defaultMinSize, quota/4)
}

func (m Maintenance) maxInUse() int64 {
	if m.MaxInUse > 0 {
		return m.MaxInUse
	}
	return defaultMaxInUse
}

type action int

const (
	keep     action = iota
	defrag          // defragment now
	tooLarge        // worth defragmenting, but not online
)

// decide is the policy: what to do with a file of size bytes, inUse of
// them in use, under quota, with or without a NOSPACE alarm, compacted or
// not since the last defragmentation.
func (m Maintenance) decide(size, inUse, quota int64, noSpace, compacted bool) action {
	free := size - inUse
	var worth bool
	if noSpace {
		// Whatever may bring the file under the disarm mark.
		worth = compacted && size > quota/10*disarmBelow
	} else {
		worth = size >= m.minSize(quota) && free >= size/2
	}
	switch {
	case !worth:
		return keep
	case inUse > m.maxInUse():
		return tooLarge
	default:
		return defrag
	}
}

// maintain checks the database every interval until Close.
func (s *Server) maintain() {
	t := time.NewTicker(s.cfg.Maintenance.interval())
	defer t.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-t.C:
		}
		s.check()
	}
}

// check is one round of maintenance.
func (s *Server) check() {
	es := s.etcd.Server
	size, inUse := es.Backend().Size(), es.Backend().SizeInUse()
	quota := s.Quota()
	noSpace := s.noSpace()
	compactRev := es.KV().FirstRev()
	switch s.cfg.Maintenance.decide(size, inUse, quota, noSpace, compactRev != s.defragCompactRev) {
	case defrag:
		s.tooLargeLogged = false
		start := time.Now()
		err := es.Defragment()
		took := time.Since(start)
		s.m.LastDefragDuration.Set(took.Seconds())
		if err != nil {
			s.m.DefragFailures.Inc()
			s.cfg.Log.Warn("defragmenting the embedded etcd's database failed; retrying at the next check",
				"size_bytes", size, "in_use_bytes", inUse, "took", took, "error", err)
			break
		}
		s.defragCompactRev = compactRev
		s.m.Defrags.Inc()
		why := "its file was mostly free space"
		if noSpace {
			why = "NOSPACE, and a compaction since the last defragmentation"
		}
		s.cfg.Log.Info("defragmented the embedded etcd's database", "why", why,
			"size_before_bytes", size, "in_use_bytes", inUse, "size_after_bytes", es.Backend().Size(), "took", took)
	case tooLarge:
		if !s.tooLargeLogged {
			s.tooLargeLogged = true
			s.cfg.Log.Warn("the embedded etcd's database is mostly free space but too large to defragment while serving (etcd answers nothing meanwhile): stop this process and run `etcdutl defrag --data-dir <data_dir>` (docs/RUNBOOK.md)",
				"size_bytes", size, "in_use_bytes", inUse, "online_limit_bytes", s.cfg.Maintenance.maxInUse(), "data_dir", s.cfg.Dir)
		}
	}
	if noSpace {
		s.disarm(quota)
	}
}

// noSpace reports whether this member has a NOSPACE alarm.
func (s *Server) noSpace() bool {
	id := uint64(s.etcd.Server.MemberID())
	for _, a := range s.etcd.Server.Alarms() {
		if a.MemberID == id && a.Alarm == pb.AlarmType_NOSPACE {
			return true
		}
	}
	return false
}

// disarm disarms this member's NOSPACE alarm when the file is back under
// the mark.
func (s *Server) disarm(quota int64) {
	size := s.etcd.Server.Backend().Size()
	if size > quota/10*disarmBelow {
		return
	}
	ctx, cancel := context.WithTimeout(s.ctx, 10*time.Second)
	defer cancel()
	_, err := s.etcd.Server.Alarm(ctx, &pb.AlarmRequest{
		Action:   pb.AlarmRequest_DEACTIVATE,
		MemberID: uint64(s.etcd.Server.MemberID()),
		Alarm:    pb.AlarmType_NOSPACE,
	})
	if err != nil {
		if s.ctx.Err() == nil {
			s.cfg.Log.Warn("disarming the embedded etcd's NOSPACE alarm failed; retrying at the next check", "error", err)
		}
		return
	}
	s.m.Disarms.Inc()
	s.cfg.Log.Warn("disarmed the embedded etcd's NOSPACE alarm: its database is back under 80 % of its quota after compaction and defragmentation; writes work again",
		"size_bytes", size, "quota_bytes", quota)
}
