// Package registrar keeps exactly one live registration of a worker in etcd.
//
// A worker is announced under the key <prefix><job>/<host>/<slot> on an etcd
// lease: one of its own by default, or one its host's registrations share
// (HostLeases, kept alive once by a host agent). Leases (leases.go) holds
// every rule of a lease's life for both kinds: grant or resume, keep-alive,
// loss, release and adoption across kinds; the registration code asks it
// and never branches on the kind. The slot is the lowest free integer for (job, host), claimed with a
// compare-and-create transaction, so a restarted worker takes the slot its
// predecessor freed and the series Prometheus stores keep their identity.
//
// Registration must survive anything etcd does: a lost keep-alive, an expired or
// revoked lease, a deleted key, an etcd that restarts or is wiped. Every such loss
// leads to a new lease and a new claim (the previous slot first), retried for ever
// with capped, jittered backoff. A graceful Deregister removes the key at once
// (revoking a lease of its own, deleting it from a host's) instead of
// leaving it to expire after the TTL.
//
// The package is also the single source of truth for the key schema (schema.go):
// the reader side (package etcdsd) decodes and validates with the same code that
// writes, so a registration one side accepts the other side accepts too.
package registrar
