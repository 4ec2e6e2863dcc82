package main

import (
	"os"
	"syscall"
)

// childAttr puts a child in its own process group (Ctrl-C reaches the demo
// only, which stops the children in order) and kills it if the demo dies
// without cleaning up (Pdeathsig, Linux only).
func childAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}

func killGroup(p *os.Process) { syscall.Kill(-p.Pid, syscall.SIGKILL) }
func termGroup(p *os.Process) { syscall.Kill(-p.Pid, syscall.SIGTERM) }
