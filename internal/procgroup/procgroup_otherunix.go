//go:build unix && !linux

package procgroup

import "syscall"

// Attr is the SysProcAttr of a child in a group of its own. Without Linux's
// Pdeathsig a parent that dies without cleaning up leaves it running.
func Attr() *syscall.SysProcAttr { return &syscall.SysProcAttr{Setpgid: true} }
