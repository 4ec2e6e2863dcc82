// Package agent is the host agent that registers workers which cannot embed
// Go: a gunicorn, uWSGI or Puma worker calls a small JSON API on a Unix
// socket after it forks, and the agent keeps one registrar.Registrar per
// worker, so the etcd data is exactly what an embedded Go worker writes.
//
// The agent also does what a lease cannot: it watches every registered
// process (a pidfd where the kernel has them, otherwise polling) and removes
// the registration the moment the process exits, instead of leaving a dead
// target behind for a TTL: with the host's shared lease (the default) a
// delete on the key's lease and value, its slot's hold moved to a lease of
// its own; with a lease per worker, a revoke of that lease.
//
// Its registrations survive a restart of the agent: they are kept in a state
// file, and a restarted agent adopts the keys and leases of the processes
// that are still alive (registrar.Config.Resume) rather than claiming second
// slots, and removes those of processes that died meanwhile.
package agent
