package etcdsd

import (
	"encoding/json"
	"fmt"
	"strconv"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/discovery/targetgroup"

	"github.com/workersd/workersd/registrar"
	"github.com/workersd/workersd/sdfile"
)

// Labels that TargetGroup sets besides job, instance and the user labels.
//
// No meta labels: Prometheus parses every byte of the output at each write,
// and at 100,000 targets each byte per target is 100 kB more to parse every
// few seconds. The facts they used to carry are elsewhere: the port in
// __address__, the pid in the worker's own metrics path, the etcd key in
// job/host/worker, and all of them on sdwriter's status page.
const (
	LabelHost   = "host"
	LabelWorker = "worker"
	// LabelTmpHash is what the Prometheus Operator's sharding (shards: N)
	// hashes when a target has it, instead of __address__. A worker's
	// address changes at each restart; its instance does not, so hashing
	// the instance keeps a slot's series on one shard. Prometheus drops it
	// with every other __ label after relabelling: no series carries it.
	LabelTmpHash = "__tmp_hash"
)

// TargetOptions are the choices of the program that serves the targets.
type TargetOptions struct {
	// TmpHash adds __tmp_hash = instance to every target (LabelTmpHash):
	// about 25 bytes more per target for every Prometheus to parse, so only
	// where an operator shards by it.
	TmpHash bool
}

// TargetGroup turns one decoded registration into the target group
// Prometheus receives (DESIGN.md, "What Prometheus receives"): one target,
// the registration's address, and its labels. Source is the etcd key, so a
// group is replaced when its registration changes and removed when it goes.
//
// r must come from registrar.Decode (or have passed Value.Validate): the
// user labels are then valid and can override none of the labels set here.
func TargetGroup(r registrar.Registration, o TargetOptions) *targetgroup.Group {
	key := r.Key.String()
	labels := make(model.LabelSet, len(r.Labels)+7)
	for name, value := range r.Labels {
		labels[model.LabelName(name)] = model.LabelValue(value)
	}
	labels[model.JobLabel] = model.LabelValue(r.Job)
	labels[model.InstanceLabel] = model.LabelValue(r.Instance())
	if o.TmpHash {
		labels[LabelTmpHash] = labels[model.InstanceLabel]
	}
	labels[LabelHost] = model.LabelValue(r.Host)
	labels[LabelWorker] = model.LabelValue(strconv.Itoa(r.Slot))
	if s := r.SchemeOrDefault(); s != registrar.DefaultScheme {
		labels[model.SchemeLabel] = model.LabelValue(s)
	}
	if p := r.MetricsPathOrDefault(); p != registrar.DefaultMetricsPath {
		labels[model.MetricsPathLabel] = model.LabelValue(p)
	}
	return &targetgroup.Group{
		Source:  key,
		Targets: []model.LabelSet{{model.AddressLabel: model.LabelValue(r.Address)}},
		Labels:  labels,
	}
}

// rendered is a one-target entry as sdfile renders it.
type rendered struct {
	Targets []string          `json:"targets"`
	Labels  map[string]string `json:"labels"`
}

// parse reads t's rendered entry back. It was rendered by this process from
// a validated registration, so failing to read it is a bug, not bad input.
func parse(t *sdfile.Target) rendered {
	var r rendered
	if err := json.Unmarshal([]byte(t.Data), &r); err != nil {
		panic(fmt.Sprintf("etcdsd: the rendered entry of %s does not parse: %v: %s", t.Source, err, t.Data))
	}
	return r
}

// groupOf is the target group t renders, read back as file_sd reads it:
// what TargetGroup made of the registration.
func groupOf(t *sdfile.Target) *targetgroup.Group {
	g := &targetgroup.Group{Source: t.Source}
	if t.Data == "" {
		return g
	}
	r := parse(t)
	for _, addr := range r.Targets {
		g.Targets = append(g.Targets, model.LabelSet{model.AddressLabel: model.LabelValue(addr)})
	}
	g.Labels = make(model.LabelSet, len(r.Labels))
	for name, value := range r.Labels {
		g.Labels[model.LabelName(name)] = model.LabelValue(value)
	}
	return g
}
