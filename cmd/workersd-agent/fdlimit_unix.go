//go:build unix

package main

import (
	"syscall"

	"github.com/hashicorp/go-hclog"
)

// warnIfFewDescriptors warns when the descriptor limit leaves the API's
// connection limit no room: the agent also needs a descriptor per worker
// (its pidfd) and its etcd connections, and a flood of connections would
// then fail accept with "too many open files" before any limit applies.
func warnIfFewDescriptors(log hclog.Logger, maxConns int) {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return
	}
	if rl.Cur < uint64(2*maxConns) {
		log.Warn("the descriptor limit is low for --listen.max-connections: raise LimitNOFILE, or lower the flag", "limit", rl.Cur, "max_connections", maxConns)
	}
}
