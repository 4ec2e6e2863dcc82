//go:build unix

package procgroup

import (
	"fmt"
	"os"
	"syscall"
)

// Signal sends sig to the process group of p, a child started with Attr.
func Signal(p *os.Process, sig syscall.Signal) error {
	if err := syscall.Kill(-p.Pid, sig); err != nil {
		return fmt.Errorf("signal %s to process group %d: %w", sig, p.Pid, err)
	}
	return nil
}

// Kill kills the process group of p, a child started with Attr.
func Kill(p *os.Process) error { return Signal(p, syscall.SIGKILL) }

// Term asks the process group of p, a child started with Attr, to stop.
func Term(p *os.Process) error { return Signal(p, syscall.SIGTERM) }
