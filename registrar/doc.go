// Package registrar keeps exactly one live registration of a worker in etcd.
//
// A worker is announced under the key <prefix><job>/<host>/<slot> on a lease of
// its own. The slot is the lowest free integer for (job, host), claimed with a
// compare-and-create transaction, so a restarted worker takes the slot its
// predecessor freed and the series Prometheus stores keep their identity.
//
// Registration must survive anything etcd does: a lost keep-alive, an expired or
// revoked lease, a deleted key, an etcd that restarts or is wiped. Every such loss
// leads to a new lease and a new claim (the previous slot first), retried for ever
// with capped, jittered backoff. A graceful Deregister revokes the lease, so the
// key disappears at once instead of after the TTL.
//
// The package is also the single source of truth for the key schema (schema.go):
// the reader side (package etcdsd) decodes and validates with the same code that
// writes, so a registration one side accepts the other side accepts too.
package registrar
