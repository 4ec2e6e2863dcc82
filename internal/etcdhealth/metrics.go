package etcdhealth

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/workersd/workersd/internal/metricset"
)

// Metrics are the Reporter's metrics. Their names carry no prefix: the
// caller chooses one by wrapping the Registerer, for example
// prometheus.WrapRegistererWithPrefix("workersd_sdwriter_", reg).
type Metrics struct {
	metricset.Set

	// Up is 1 per endpoint that answered its last Status, 0 otherwise.
	Up *prometheus.GaugeVec
	// DBSize, DBSizeInUse and Quota are each endpoint's answer; an
	// endpoint that does not answer has none, nor a quota it did not say.
	DBSize      *prometheus.GaugeVec
	DBSizeInUse *prometheus.GaugeVec
	Quota       *prometheus.GaugeVec
	// AlarmActive is, per alarm type (NOSPACE, CORRUPT, OTHER), how many
	// members have it active.
	AlarmActive *prometheus.GaugeVec
}

// NewMetrics creates the metrics; Register (metricset.Set) registers them
// with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Up: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "etcd_endpoint_up",
			Help: "Whether the etcd endpoint answered its last Status request (1) or not (0).",
		}, []string{"endpoint"}),
		DBSize: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "etcd_db_size_bytes",
			Help: "Size of the etcd member's database file, free pages included: what its quota counts.",
		}, []string{"endpoint"}),
		DBSizeInUse: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "etcd_db_size_in_use_bytes",
			Help: "Part of the etcd member's database file in use; the rest is free space that only defragmentation returns.",
		}, []string{"endpoint"}),
		Quota: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "etcd_db_quota_bytes",
			Help: "The etcd member's database quota (--quota-backend-bytes), as it reports it (etcd 3.6 and later).",
		}, []string{"endpoint"}),
		AlarmActive: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "etcd_alarm_active",
			Help: "Members of the etcd cluster with this alarm active: NOSPACE (the database reached its quota: no writes), CORRUPT (a member's data differs).",
		}, []string{"alarm"}),
	}
	for _, a := range []string{"NOSPACE", "CORRUPT"} {
		m.AlarmActive.WithLabelValues(a)
	}
	m.Set = metricset.New(reg, m.Up, m.DBSize, m.DBSizeInUse, m.Quota, m.AlarmActive)
	return m
}

// update sets the metrics to what a check found.
func (m *Metrics) update(s Snapshot) {
	for _, e := range s.Endpoints {
		if e.Error != "" {
			m.Up.WithLabelValues(e.Endpoint).Set(0)
			m.DBSize.DeleteLabelValues(e.Endpoint)
			m.DBSizeInUse.DeleteLabelValues(e.Endpoint)
			m.Quota.DeleteLabelValues(e.Endpoint)
			continue
		}
		m.Up.WithLabelValues(e.Endpoint).Set(1)
		m.DBSize.WithLabelValues(e.Endpoint).Set(float64(e.DBSizeBytes))
		m.DBSizeInUse.WithLabelValues(e.Endpoint).Set(float64(e.DBSizeInUseBytes))
		if e.QuotaBytes > 0 {
			m.Quota.WithLabelValues(e.Endpoint).Set(float64(e.QuotaBytes))
		} else {
			m.Quota.DeleteLabelValues(e.Endpoint)
		}
	}
	if s.AlarmsError != "" {
		return // the last known alarms stay
	}
	counts := map[string]int{"NOSPACE": 0, "CORRUPT": 0}
	for _, a := range s.Alarms {
		counts[a.Alarm]++
	}
	if _, ok := counts["OTHER"]; !ok {
		m.AlarmActive.DeleteLabelValues("OTHER")
	}
	for a, n := range counts {
		m.AlarmActive.WithLabelValues(a).Set(float64(n))
	}
}
