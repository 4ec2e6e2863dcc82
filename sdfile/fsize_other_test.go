//go:build !unix

package sdfile

import "testing"

func limitFileSize(t *testing.T, n uint64) {
	t.Helper()
	t.Skip("no RLIMIT_FSIZE on this system")
}
