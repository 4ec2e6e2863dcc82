// Command bench is the side-by-side benchmark harness of issue 6: workersd
// against what users would otherwise pick (Python prometheus_client's
// multiprocess mode, Prometheus' custom-SD adapter, go-kit's sd/etcdv3),
// measured in one run on one machine, plus the project's own figures.
//
// It is its own Go module so that the peers it links (go-kit, gonum/plot)
// never enter the main module's go.mod. It is not part of CI: run it with
// scripts/bench, which writes docs/BENCHMARKS.md and the plots under docs/.
//
// Everything runs against real components: an etcd member embedded in this
// process on loopback ports (fsync off, as in the main module's
// benchmarks), real workers serving /metrics over HTTP, the real
// prometheus_client library in a Python process, and the main module's
// own Go benchmarks run as `go test` subprocesses whose figures are copied
// with the command that produced them.
package main
