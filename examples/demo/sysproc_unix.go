//go:build unix && !linux

package main

import (
	"os"
	"syscall"
)

// childAttr puts a child in its own process group: Ctrl-C reaches the demo
// only, which stops the children in order. Without Linux's Pdeathsig a
// killed demo leaves its children running.
func childAttr() *syscall.SysProcAttr { return &syscall.SysProcAttr{Setpgid: true} }

func killGroup(p *os.Process) { syscall.Kill(-p.Pid, syscall.SIGKILL) }
func termGroup(p *os.Process) { syscall.Kill(-p.Pid, syscall.SIGTERM) }
