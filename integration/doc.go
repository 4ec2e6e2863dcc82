// Package integration holds the end-to-end suite: real processes (a
// 3-member etcd cluster, sdwriter, demo workers, Debian's prometheus) on
// loopback ports, checking what users are promised: the sums in Prometheus
// equal what the workers did, through crashes, restarts, etcd failures and
// sdwriter restarts, and the number of series stays bounded.
//
// It also runs promtool on examples/prometheus.yml and examples/rules.yml.
// The tests need prometheus and promtool on PATH (scripts/test installs
// Debian's prometheus package); outside CI they are skipped without them,
// with CI=true they fail. `go test -short` skips the end-to-end scenarios.
//
// The package has no code of its own besides its tests and the etcdmember
// helper command under cmd/.
package integration
