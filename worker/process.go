package worker

import (
	"os"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/procfs"
)

// processCollector exports the standard process_* metrics of client_golang's
// process collector, with the same names and help, except
// process_network_{receive,transmit}_bytes_total. Those come from
// /proc/<pid>/net/netstat, which describes the whole network namespace rather
// than the process (every worker on a host would report the host's traffic),
// and reading it was the largest single cost of a worker's scrape.
type processCollector struct {
	proc                                              procfs.Proc
	cpu, openFDs, maxFDs, vsize, maxVsize, rss, start *prometheus.Desc
}

func newProcessCollector() (prometheus.Collector, error) {
	p, err := procfs.NewProc(os.Getpid())
	if err != nil {
		return nil, err
	}
	d := func(name, help string) *prometheus.Desc { return prometheus.NewDesc(name, help, nil, nil) }
	return &processCollector{
		proc:     p,
		cpu:      d("process_cpu_seconds_total", "Total user and system CPU time spent in seconds."),
		openFDs:  d("process_open_fds", "Number of open file descriptors."),
		maxFDs:   d("process_max_fds", "Maximum number of open file descriptors."),
		vsize:    d("process_virtual_memory_bytes", "Virtual memory size in bytes."),
		maxVsize: d("process_virtual_memory_max_bytes", "Maximum amount of virtual memory available in bytes."),
		rss:      d("process_resident_memory_bytes", "Resident memory size in bytes."),
		start:    d("process_start_time_seconds", "Start time of the process since unix epoch in seconds."),
	}, nil
}

func (c *processCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.cpu, c.openFDs, c.maxFDs, c.vsize, c.maxVsize, c.rss, c.start} {
		ch <- d
	}
}

// Collect reports what it can read; a failed read leaves its metrics out
// rather than failing the scrape, as client_golang's collector does.
func (c *processCollector) Collect(ch chan<- prometheus.Metric) {
	if stat, err := c.proc.Stat(); err == nil {
		ch <- prometheus.MustNewConstMetric(c.cpu, prometheus.CounterValue, stat.CPUTime())
		ch <- prometheus.MustNewConstMetric(c.vsize, prometheus.GaugeValue, float64(stat.VirtualMemory()))
		ch <- prometheus.MustNewConstMetric(c.rss, prometheus.GaugeValue, float64(stat.ResidentMemory()))
		if t, err := stat.StartTime(); err == nil {
			ch <- prometheus.MustNewConstMetric(c.start, prometheus.GaugeValue, t)
		}
	}
	if n, err := c.proc.FileDescriptorsLen(); err == nil {
		ch <- prometheus.MustNewConstMetric(c.openFDs, prometheus.GaugeValue, float64(n))
	}
	if l, err := c.proc.Limits(); err == nil {
		ch <- prometheus.MustNewConstMetric(c.maxFDs, prometheus.GaugeValue, float64(l.OpenFiles))
		ch <- prometheus.MustNewConstMetric(c.maxVsize, prometheus.GaugeValue, float64(l.AddressSpace))
	}
}
