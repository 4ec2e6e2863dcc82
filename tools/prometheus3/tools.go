//go:build tools

// Package prometheus3 pins the Prometheus server that the end-to-end suite
// and the demo run (3.15.0, module version v0.315.0). It is a module of its
// own so that the main module's dependencies do not move with it; Debian
// packages only Prometheus 2.42. scripts/prometheus builds it.
package prometheus3

import _ "github.com/prometheus/prometheus/cmd/prometheus"
