//go:build !(linux || darwin)

package filetest

import "testing"

// LimitSize: no RLIMIT_FSIZE here; the test is skipped.
func LimitSize(t testing.TB, n uint64) {
	t.Helper()
	t.Skip("no RLIMIT_FSIZE on this system")
}
