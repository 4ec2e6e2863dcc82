//go:build unix

package atomicfile

import (
	"errors"
	"fmt"
	"io/fs"
	"os"

	"golang.org/x/sys/unix"
)

// createTemp creates a temporary file in dir (os.CreateTemp's pattern) and
// takes an exclusive flock on it, held through a duplicate descriptor until
// unlock is called, so that it outlasts the file's Close: Clean never
// removes a temporary between its creation and its rename. Where the file
// system has no flock the file is used unlocked (and Clean removes nothing
// there).
func createTemp(dir, pattern string) (f *os.File, unlock func(), err error) {
	for range 10 {
		f, err := os.CreateTemp(dir, pattern)
		if err != nil {
			return nil, nil, err
		}
		lockFD := -1
		var lerr error
		rc, err := f.SyscallConn()
		if err == nil {
			err = rc.Control(func(fd uintptr) {
				lockFD, lerr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0)
			})
		}
		if err == nil {
			err = lerr
		}
		if err != nil {
			f.Close()
			os.Remove(f.Name())
			return nil, nil, fmt.Errorf("duplicate descriptor: %w", err)
		}
		unlock := func() { unix.Close(lockFD) }
		// Waits only while a Clean that opened the file before this lock
		// holds it: Clean never waits for anything.
		if err := flockRetry(lockFD, unix.LOCK_EX); err != nil {
			if noLocks(err) {
				return f, unlock, nil
			}
			unlock()
			f.Close()
			os.Remove(f.Name())
			return nil, nil, fmt.Errorf("lock %s: %w", f.Name(), err)
		}
		// A Clean may have locked and removed the file between its creation
		// and this lock: then take another.
		if same(f, f.Name()) {
			return f, unlock, nil
		}
		unlock()
		f.Close()
	}
	return nil, nil, errors.New("temporary files removed as soon as created, 10 times")
}

// removeIfStale removes the temporary at path if no process holds its lock.
func removeIfStale(path string) (removed bool, err error) {
	// O_NONBLOCK: a FIFO put there must not block Clean; O_NOFOLLOW: a
	// symbolic link is nobody's temporary.
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return false, nil // renamed into place meanwhile
		}
		return false, fmt.Errorf("clean %s: %w", path, err)
	}
	f := os.NewFile(uintptr(fd), path)
	defer f.Close()
	if err := flockRetry(fd, unix.LOCK_EX|unix.LOCK_NB); err != nil {
		if errors.Is(err, unix.EWOULDBLOCK) || noLocks(err) {
			return false, nil // a live writer's, or cannot tell
		}
		return false, fmt.Errorf("clean %s: %w", path, err)
	}
	// Still the file locked, not one renamed there since.
	if !same(f, path) {
		return false, nil
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return false, fmt.Errorf("clean %s: %w", path, err)
	}
	return true, nil
}

func flockRetry(fd, how int) error {
	for {
		err := unix.Flock(fd, how)
		if !errors.Is(err, unix.EINTR) {
			return err
		}
	}
}

// noLocks says whether err means the file system does not support flock.
func noLocks(err error) bool {
	return errors.Is(err, unix.ENOLCK) || errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOTSUP) || errors.Is(err, unix.EINVAL)
}

// same says whether path still names the open file f.
func same(f *os.File, path string) bool {
	fi, err := f.Stat()
	if err != nil {
		return false
	}
	pi, err := os.Lstat(path)
	return err == nil && os.SameFile(fi, pi)
}
