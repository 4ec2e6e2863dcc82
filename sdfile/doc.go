// Package sdfile renders Prometheus target groups as file_sd / http_sd JSON
// and keeps a file and an HTTP endpoint up to date with them.
//
// Rendering is deterministic (Render, Store): the same groups give the same
// bytes whatever the order they came in, so two sdwriters beside two
// Prometheus servers write identical files. FileWriter replaces its file
// atomically, and only when the content changes (internal/atomicfile's
// Replace: a temporary file in the .atomicfile directory beside it, which
// no file_sd glob matches, mode 0644, rename). It does not fsync: the
// output is derived from etcd and written again whenever sdwriter starts,
// so a machine crash costs nothing that the next start does not restore.
// Syncer ties them together for a discoverer: it takes updates, coalesces
// bursts, writes, retries failed writes and serves the same bytes as http_sd.
//
// The package knows nothing of etcd; it works with any discoverer's groups.
package sdfile
