//go:build !linux

package agent

import (
	"context"
	"errors"
	"runtime"
	"time"
)

// The agent reads /proc for process start times (to tell a pid's successor
// from the process it registered) and watches exits through pidfds; other
// systems are not supported, and New says so.
var errNotAlive = errors.New("process is not alive")

var errUnsupported = errors.New("the workersd agent needs Linux (/proc, pidfd); this is " + runtime.GOOS)

func platformSupported() error { return errUnsupported }

func processStartTicks(pid int) (uint64, error)        { return 0, errUnsupported }
func processOwner(pid int) (int, error)                { return 0, errUnsupported }
func alive(pid int, startTicks uint64) bool            { return false }
func processStartTime(ticks uint64) (time.Time, error) { return time.Time{}, errUnsupported }
func (h *procHandle) usesPidfd() bool                  { return false }
func (h *procHandle) wait(ctx context.Context) error   { return errUnsupported }
func (h *procHandle) close()                           {}

type procHandle struct{}

func openProc(pid int, startTicks uint64, poll time.Duration, usePidfd bool) (*procHandle, error) {
	return nil, errUnsupported
}

func pollProc(pid int, startTicks uint64, poll time.Duration) *procHandle { return &procHandle{} }
