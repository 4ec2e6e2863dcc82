package procgroup

import "syscall"

// Attr is the SysProcAttr of a child in a group of its own, killed with its
// parent. A caller that needs more (credentials) sets them on the result.
func Attr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
