// Command soak is the randomized fault run of the whole stack (issue 23):
// a 3-member etcd cluster as separate processes, two agent hosts in network
// namespaces (real gunicorn workers recycled by max_requests through
// clients/python on both, Go demo workers on the second), sdwriter writing
// to a small tmpfs, and Prometheus 3.15 with
// --enable-feature=created-timestamp-zero-ingestion, under faults drawn
// from a seed: worker SIGTERM and kill -9, agent and sdwriter kill -9 and
// restart, an etcd member or the leader killed and restarted, a host's link
// cut and slowed, the output directory full.
//
// It checks, continuously and at the end, what docs/SOAK.md lists, prints
// its seed and fault schedule (the same seed gives the same schedule), and
// exits non-zero on any violation. scripts/soak builds it and runs it as
// root (network namespaces, tc, a tmpfs mount); everything it creates is
// removed at its end, also on failure.
package main
