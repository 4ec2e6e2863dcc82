package etcdsd

import (
	"net"
	"strconv"
	"time"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/discovery/targetgroup"

	"github.com/workersd/workersd/registrar"
)

// Labels that TargetGroup sets besides the user labels. The meta labels carry
// the volatile facts of a registration: available to relabelling, dropped
// before storage unless a relabel rule keeps them.
const (
	LabelHost       = "host"
	LabelWorker     = "worker"
	MetaLabelPrefix = model.MetaLabelPrefix + "workersd_"
	MetaPID         = MetaLabelPrefix + "pid"
	MetaPort        = MetaLabelPrefix + "port"
	MetaKey         = MetaLabelPrefix + "key"
	MetaStartedAt   = MetaLabelPrefix + "started_at"
)

// TargetGroup turns one decoded registration into the target group
// Prometheus receives (DESIGN.md, "What Prometheus receives"): one target,
// the registration's address, and its labels. Source is the etcd key, so a
// group is replaced when its registration changes and removed when it goes.
//
// r must come from registrar.Decode (or have passed Value.Validate): the
// user labels are then valid and can override none of the labels set here.
func TargetGroup(r registrar.Registration) *targetgroup.Group {
	key := r.Key.String()
	labels := make(model.LabelSet, len(r.Labels)+9)
	for name, value := range r.Labels {
		labels[model.LabelName(name)] = model.LabelValue(value)
	}
	labels[model.JobLabel] = model.LabelValue(r.Job)
	labels[model.InstanceLabel] = model.LabelValue(r.Instance())
	labels[LabelHost] = model.LabelValue(r.Host)
	labels[LabelWorker] = model.LabelValue(strconv.Itoa(r.Slot))
	if s := r.SchemeOrDefault(); s != registrar.DefaultScheme {
		labels[model.SchemeLabel] = model.LabelValue(s)
	}
	if p := r.MetricsPathOrDefault(); p != registrar.DefaultMetricsPath {
		labels[model.MetricsPathLabel] = model.LabelValue(p)
	}
	labels[MetaKey] = model.LabelValue(key)
	if _, port, err := net.SplitHostPort(r.Address); err == nil {
		labels[MetaPort] = model.LabelValue(port)
	}
	if r.PID > 0 {
		labels[MetaPID] = model.LabelValue(strconv.Itoa(r.PID))
	}
	if !r.StartedAt.IsZero() {
		labels[MetaStartedAt] = model.LabelValue(r.StartedAt.UTC().Format(time.RFC3339))
	}
	return &targetgroup.Group{
		Source:  key,
		Targets: []model.LabelSet{{model.AddressLabel: model.LabelValue(r.Address)}},
		Labels:  labels,
	}
}
