// Package daemonmetrics sets up the registry of a workersd daemon's own
// /metrics (sdwriter, workersd-agent), so that both expose the same
// process-level series under the same names: the Go runtime (go_*), the
// process (process_*) and workersd_build_info. What each daemon adds
// (its packages' metrics) it registers on the result.
package daemonmetrics

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	versioncollector "github.com/prometheus/client_golang/prometheus/collectors/version"

	// Fills the version variables workersd_build_info reports in builds
	// without -ldflags (go build, go run): see its version.go.
	_ "github.com/workersd/workersd/internal/cliflags"
)

// NewRegistry returns a registry holding the collectors every workersd
// daemon exposes: the Go runtime, the process, and workersd_build_info
// (version, revision, branch, Go version).
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		versioncollector.NewCollector("workersd"),
	)
	return reg
}
