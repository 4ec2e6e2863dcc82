package sdfile

import (
	"crypto/md5"
	"encoding/binary"
	"fmt"
	"path/filepath"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/discovery/targetgroup"
)

// Shard is the shard of n that Prometheus' relabelling gives a target whose
// instance label is instance, with action hashmod, source_labels [instance]
// and modulus n (examples/prometheus.yml): the last 8 bytes of the value's
// MD5 sum, big-endian, modulo n. A target without an instance label hashes
// "", as in Prometheus, where instance defaults to the address only after
// relabelling.
func Shard(instance string, n int) int {
	if n <= 1 {
		return 0
	}
	sum := md5.Sum([]byte(instance))
	return int(binary.BigEndian.Uint64(sum[8:]) % uint64(n))
}

// ShardFile is the file of shard k of n when the output is file: file
// itself for a single shard, else a file of the same name in a directory
// of its own beside it, "shard-<k>-of-<n>"
// (/var/lib/workersd/targets/workersd.json, shard 1 of 4:
// /var/lib/workersd/targets/shard-1-of-4/workersd.json). A directory each,
// because Prometheus' file_sd reads its files again on any event in the
// directories it watches: with the shards side by side, each server would
// parse its file after every write of every shard. The count is in the
// name so that the files of an earlier count are never taken for this
// one's, and a glob on the unsharded output (*.json) matches none of them.
func ShardFile(file string, k, n int) string {
	if n <= 1 || file == "" {
		return file
	}
	dir, base := filepath.Split(file)
	return filepath.Join(dir, fmt.Sprintf("shard-%d-of-%d", k, n), base)
}

// splitGroups splits each group into n, one per shard, each with the
// targets of its shard (possibly none, which removes the group's source
// from that shard's Store) and the group's labels and source.
func splitGroups(groups []*targetgroup.Group, n int) [][]*targetgroup.Group {
	out := make([][]*targetgroup.Group, n)
	for _, g := range groups {
		if g == nil {
			continue
		}
		parts := make([]*targetgroup.Group, n)
		for k := range parts {
			parts[k] = &targetgroup.Group{Source: g.Source, Labels: g.Labels}
		}
		for _, t := range g.Targets {
			inst, ok := t[model.InstanceLabel]
			if !ok {
				inst = g.Labels[model.InstanceLabel]
			}
			k := Shard(string(inst), n)
			parts[k].Targets = append(parts[k].Targets, t)
		}
		for k, p := range parts {
			out[k] = append(out[k], p)
		}
	}
	return out
}
