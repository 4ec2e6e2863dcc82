package sdfile

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are a Syncer's metrics. Their names carry no prefix: the caller
// chooses one by wrapping the Registerer (sdwriter uses
// "workersd_sdwriter_").
type Metrics struct {
	reg prometheus.Registerer

	// Targets counts the targets in the output, Jobs their distinct job
	// labels.
	Targets prometheus.Gauge
	Jobs    prometheus.Gauge
	// Writes counts files written (content changed); WriteErrors counts
	// failed attempts, each of which is retried.
	Writes      prometheus.Counter
	WriteErrors prometheus.Counter
	// WrittenBytes counts the bytes of the files written; Bytes is the
	// size of the output (all shards).
	WrittenBytes prometheus.Counter
	Bytes        prometheus.Gauge
	// LastSuccess is when the file was last found or made up to date.
	LastSuccess prometheus.Gauge
	// Latency is from the arrival of a change (the etcd event) to the output
	// holding it: the file renamed or, without a file, the bytes served.
	Latency prometheus.Histogram
}

// NewMetrics creates the metrics; Register registers them with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	return &Metrics{
		reg: reg,
		Targets: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "targets",
			Help: "Targets in the output.",
		}),
		Jobs: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "jobs",
			Help: "Distinct job labels of the targets in the output (per job: count by (job) (up) in Prometheus).",
		}),
		Writes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "output_writes_total",
			Help: "Times the output file was written because its content changed.",
		}),
		WriteErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "output_write_errors_total",
			Help: "Failed attempts to write the output file; the previous file stays and the write is retried.",
		}),
		WrittenBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "output_written_bytes_total",
			Help: "Bytes of the output files written (what Prometheus' file_sd reads and parses again after each write).",
		}),
		Bytes: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "output_bytes",
			Help: "Size of the output in bytes, all shards together.",
		}),
		LastSuccess: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "output_last_write_success_timestamp_seconds",
			Help: "When the output file was last written or found up to date, in seconds since the epoch.",
		}),
		Latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "event_to_output_seconds",
			Help:    "From the arrival of an etcd event to the output file renamed (or the http_sd bytes updated when no file is written).",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .02, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}),
	}
}

// Register registers every metric with the Registerer given to NewMetrics;
// a nil Registerer registers nothing.
func (m *Metrics) Register() error {
	if m.reg == nil {
		return nil
	}
	var errs []error
	for _, c := range []prometheus.Collector{m.Targets, m.Jobs, m.Writes, m.WriteErrors, m.WrittenBytes, m.Bytes, m.LastSuccess, m.Latency} {
		errs = append(errs, m.reg.Register(c))
	}
	return errors.Join(errs...)
}
