// Package etcdsd reads workersd registrations from etcd and turns them into
// Prometheus target groups.
//
// A Discoverer lists the prefix (in pages, at one revision, so 100,000 keys
// are fine), then watches it from the next revision. It lists again after the
// watch falls behind a compaction, after the watch channel closes while it
// still runs, and after a probe finds that etcd was rebuilt. It never hands
// an outage on as an empty or partial target list: until etcd answers again,
// nothing is emitted, and afterwards only the differences.
//
// Keys and values are decoded with package registrar, the single source of
// truth for the schema; a malformed entry is skipped, counted by reason and
// logged (rate-limited). Each registration becomes one target group (see
// TargetGroup) whose source is its etcd key. At most one target is emitted
// per address: when two keys carry the same address, the one created last
// wins and the other is counted as a duplicate.
//
// Discoverer implements discovery.Discoverer (Run) and SDConfig implements
// discovery.Config, so a Prometheus build can compile it in after calling
// Register. sdwriter uses RunSink instead, which also tells when each change
// arrived from etcd.
//
// The package does not write files. It keeps each registration as the
// bytes package sdfile renders for it (sdfile.Target), and hands those to
// a TargetSink (sdfile.Syncer) as they are; other sinks get target groups
// read back from them.
package etcdsd
