//go:build linux || darwin

package filetest

import (
	"syscall"
	"testing"
)

// LimitSize makes writes beyond n bytes fail with EFBIG, as a full disk
// would, for this process until the test ends. Go ignores SIGXFSZ.
//
// Every file of the process is limited, go test's own log of the run too
// (testlog.txt, which it keeps for its cache when run without -count=1):
// n must exceed what that log grows to, or the run fails with "can't
// write testlog.txt". MinSize is enough.
func LimitSize(t testing.TB, n uint64) {
	if n < MinSize {
		t.Fatalf("filetest.LimitSize(%d): at least MinSize (%d), or go test's own log fails", n, MinSize)
	}
	t.Helper()
	var old syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_FSIZE, &old); err != nil {
		t.Skip("no RLIMIT_FSIZE:", err)
	}
	lim := old
	lim.Cur = n
	if err := syscall.Setrlimit(syscall.RLIMIT_FSIZE, &lim); err != nil {
		t.Skip("cannot set RLIMIT_FSIZE:", err)
	}
	t.Cleanup(func() { syscall.Setrlimit(syscall.RLIMIT_FSIZE, &old) })
}
