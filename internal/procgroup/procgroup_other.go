//go:build !unix

package procgroup

import (
	"os"
	"syscall"
)

// Attr is nil: without process groups a child is started as is.
func Attr() *syscall.SysProcAttr { return nil }

// Kill kills p; without process groups, only p.
func Kill(p *os.Process) error { return p.Kill() }

// Term kills p: without SIGTERM a child is killed outright (a worker's
// registration then expires with its lease instead of being revoked).
func Term(p *os.Process) error { return p.Kill() }
