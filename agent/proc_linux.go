package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// clockTicks is USER_HZ, the unit of /proc/<pid>/stat times. It is 100 on
// every Linux architecture Go supports; the kernel fixes it for userspace.
const clockTicks = 100

// errNotAlive means the process does not exist, is a zombie, or the pid now
// names another process than the one recorded.
var errNotAlive = errors.New("process is not alive")

// procStat is what the agent needs from /proc/<pid>/stat.
type procStat struct {
	State      byte
	Flags      uint64 // field 9: PF_* flags
	StartTicks uint64 // field 22: start time after boot, in clock ticks
}

// pfKthread is the kernel's PF_KTHREAD flag: a kernel thread, never a
// worker.
const pfKthread = 0x00200000

func readProcStat(pid int) (procStat, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return procStat{}, errNotAlive
		}
		return procStat{}, fmt.Errorf("read /proc/%d/stat: %w", pid, err)
	}
	return parseProcStat(b)
}

// parseProcStat parses "pid (comm) S ppid ... starttime ...". comm may hold
// spaces and parentheses, so fields are counted from the last ')'.
func parseProcStat(b []byte) (procStat, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return procStat{}, fmt.Errorf("malformed /proc stat: no ')'")
	}
	fields := bytes.Fields(b[i+1:])
	// fields[0] is field 3 (state), so field 22 (starttime) is fields[19].
	if len(fields) < 20 || len(fields[0]) != 1 {
		return procStat{}, fmt.Errorf("malformed /proc stat: %d fields after comm", len(fields))
	}
	start, err := strconv.ParseUint(string(fields[19]), 10, 64)
	if err != nil {
		return procStat{}, fmt.Errorf("malformed /proc stat starttime: %w", err)
	}
	flags, err := strconv.ParseUint(string(fields[6]), 10, 64)
	if err != nil {
		return procStat{}, fmt.Errorf("malformed /proc stat flags: %w", err)
	}
	return procStat{State: fields[0][0], Flags: flags, StartTicks: start}, nil
}

// processStartTicks returns the start time of a live process, errNotAlive if
// there is none (a zombie counts as dead: it will never serve again).
func processStartTicks(pid int) (uint64, error) {
	if pid <= 0 {
		return 0, errNotAlive
	}
	st, err := readProcStat(pid)
	if err != nil {
		return 0, err
	}
	if st.State == 'Z' || st.State == 'X' || st.State == 'x' {
		return 0, errNotAlive
	}
	return st.StartTicks, nil
}

// alive reports whether pid still names the process that started at
// startTicks. Errors other than "gone" count as alive: the agent must not
// revoke a worker because /proc was briefly unreadable.
func alive(pid int, startTicks uint64) bool {
	st, err := processStartTicks(pid)
	if errors.Is(err, errNotAlive) {
		return false
	}
	return err != nil || st == startTicks
}

var (
	bootTimeOnce sync.Once
	bootTime     time.Time
	bootTimeErr  error
)

// processStartTime turns start ticks into wall-clock time (whole seconds, so
// the value registered for a process is the same every time it is computed).
func processStartTime(ticks uint64) (time.Time, error) {
	bootTimeOnce.Do(func() {
		b, err := os.ReadFile("/proc/stat")
		if err != nil {
			bootTimeErr = fmt.Errorf("read /proc/stat: %w", err)
			return
		}
		for line := range bytes.SplitSeq(b, []byte("\n")) {
			if v, ok := bytes.CutPrefix(line, []byte("btime ")); ok {
				s, err := strconv.ParseInt(string(bytes.TrimSpace(v)), 10, 64)
				if err != nil {
					bootTimeErr = fmt.Errorf("parse btime: %w", err)
					return
				}
				bootTime = time.Unix(s, 0).UTC()
				return
			}
		}
		bootTimeErr = errors.New("no btime in /proc/stat")
	})
	if bootTimeErr != nil {
		return time.Time{}, bootTimeErr
	}
	return bootTime.Add(time.Duration(ticks/clockTicks) * time.Second), nil
}

// procHandle watches one process for its exit.
type procHandle struct {
	pid        int
	startTicks uint64
	poll       time.Duration
	pidfd      *os.File // nil: polling
}

// openProc starts watching pid, which must still be the process that
// started at startTicks. It prefers a pidfd, which the runtime's poller
// reports readable the instant the process exits; without one (old kernel,
// seccomp) it polls.
func openProc(pid int, startTicks uint64, poll time.Duration, usePidfd bool) (*procHandle, error) {
	h := &procHandle{pid: pid, startTicks: startTicks, poll: poll}
	if usePidfd {
		fd, err := unix.PidfdOpen(pid, unix.PIDFD_NONBLOCK)
		switch {
		case err == nil:
			h.pidfd = os.NewFile(uintptr(fd), "pidfd:"+strconv.Itoa(pid))
			// A file the runtime cannot poll cannot have a deadline: then
			// cancelling a wait would need a thread per worker. Poll instead.
			if err := h.pidfd.SetReadDeadline(time.Time{}); err != nil {
				h.pidfd.Close()
				h.pidfd = nil
			}
		case errors.Is(err, unix.ESRCH):
			return nil, errNotAlive
		}
	}
	// The pidfd pins the process: if pid still names the recorded process
	// now, the pidfd refers to it and not to a successor reusing the pid.
	if !alive(pid, startTicks) {
		h.close()
		return nil, errNotAlive
	}
	return h, nil
}

// processOwner returns the real uid of a live process, and refuses pids that
// cannot be a worker: init, kernel threads, the agent itself. Registering
// one of those would leave a registration that never expires.
func processOwner(pid int) (uid int, err error) {
	switch {
	case pid == 1:
		return 0, errNotWorker("pid 1 is init")
	case pid == os.Getpid():
		return 0, errNotWorker("it is the agent itself")
	}
	st, err := readProcStat(pid)
	if err != nil {
		return 0, err
	}
	if st.Flags&pfKthread != 0 {
		return 0, errNotWorker("it is a kernel thread")
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if errors.Is(err, os.ErrNotExist) {
		return 0, errNotAlive
	}
	if err != nil {
		return 0, fmt.Errorf("read /proc/%d/status: %w", pid, err)
	}
	for line := range bytes.SplitSeq(b, []byte("\n")) {
		if rest, ok := bytes.CutPrefix(line, []byte("Uid:")); ok {
			f := bytes.Fields(rest)
			if len(f) == 0 {
				break
			}
			return strconv.Atoi(string(f[0]))
		}
	}
	return 0, fmt.Errorf("/proc/%d/status has no Uid line", pid)
}

// pollProc watches pid by polling /proc, for when its pidfd failed.
func pollProc(pid int, startTicks uint64, poll time.Duration) *procHandle {
	return &procHandle{pid: pid, startTicks: startTicks, poll: poll}
}

// platformSupported: the agent needs /proc, which Linux has.
func platformSupported() error { return nil }

// usesPidfd says how the process is watched, for logs and tests.
func (h *procHandle) usesPidfd() bool { return h.pidfd != nil }

// wait returns nil once the process has exited, or ctx's error.
func (h *procHandle) wait(ctx context.Context) error {
	if h.pidfd != nil {
		return h.waitPidfd(ctx)
	}
	t := time.NewTicker(h.poll)
	defer t.Stop()
	for {
		if !alive(h.pid, h.startTicks) {
			return nil
		}
		select {
		case <-t.C:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (h *procHandle) waitPidfd(ctx context.Context) error {
	rc, err := h.pidfd.SyscallConn()
	if err != nil {
		return fmt.Errorf("pidfd %d: %w", h.pid, err)
	}
	stop := context.AfterFunc(ctx, func() { h.pidfd.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	exited := false
	err = rc.Read(func(fd uintptr) bool {
		// A pidfd is readable once the process has exited (zombies
		// included): ask without blocking, and let the runtime wait for
		// readability when the answer is "not yet".
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		n, perr := unix.Poll(fds, 0)
		exited = perr == nil && n > 0 && fds[0].Revents&(unix.POLLIN|unix.POLLHUP|unix.POLLERR) != 0
		return exited || (perr != nil && perr != unix.EINTR)
	})
	if exited {
		return nil
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if err != nil {
		return fmt.Errorf("wait for pid %d: %w", h.pid, err)
	}
	return fmt.Errorf("wait for pid %d: poll failed", h.pid)
}

func (h *procHandle) close() {
	if h.pidfd != nil {
		h.pidfd.Close()
	}
}
