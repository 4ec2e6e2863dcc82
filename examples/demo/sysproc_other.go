//go:build !unix

package main

import (
	"os"
	"syscall"
)

// Without process groups or SIGTERM, a child is killed outright; its
// registration then expires with its lease instead of being revoked.
func childAttr() *syscall.SysProcAttr { return nil }

func killGroup(p *os.Process) { p.Kill() }
func termGroup(p *os.Process) { p.Kill() }
