package embedetcd

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/workersd/workersd/internal/metricset"
)

// KeepAlivesReceived is etcd's count of LeaseKeepAlive stream messages
// received (grpc_server_msg_received_total): the keep-alive requests of
// every client of the members embedded in this process, whose gRPC server
// registers its metrics on the default registry.
func KeepAlivesReceived() (float64, error) {
	mfs, err := prometheus.DefaultGatherer.Gather()
	if err != nil {
		return 0, err
	}
	for _, mf := range mfs {
		if mf.GetName() != "grpc_server_msg_received_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "grpc_method" && l.GetValue() == "LeaseKeepAlive" {
					return m.GetCounter().GetValue(), nil
				}
			}
		}
	}
	return 0, errors.New("etcd's grpc_server_msg_received_total{grpc_method=LeaseKeepAlive} not found")
}

// Metrics are the member's own upkeep counters (maintain.go). Their names
// carry no prefix: the program chooses one by wrapping the Registerer
// (workersd_sdwriter_ in sdwriter).
type Metrics struct {
	metricset.Set

	Defrags            prometheus.Counter
	DefragFailures     prometheus.Counter
	LastDefragDuration prometheus.Gauge
	Disarms            prometheus.Counter
}

// NewMetrics creates the metrics; Register (metricset.Set) registers them
// with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Defrags: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "embedded_etcd_defrags_total",
			Help: "Defragmentations of the embedded etcd's database, done because its file was mostly free space.",
		}),
		DefragFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "embedded_etcd_defrag_failures_total",
			Help: "Defragmentations of the embedded etcd's database that failed.",
		}),
		LastDefragDuration: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "embedded_etcd_last_defrag_duration_seconds",
			Help: "How long the last defragmentation of the embedded etcd's database took; etcd serves no request meanwhile.",
		}),
		Disarms: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "embedded_etcd_nospace_disarms_total",
			Help: "NOSPACE alarms of the embedded etcd disarmed by itself, once its database was back under 80 % of its quota.",
		}),
	}
	m.Set = metricset.New(reg, m.Defrags, m.DefragFailures, m.LastDefragDuration, m.Disarms)
	return m
}
