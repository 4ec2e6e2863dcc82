//go:build !unix

package atomicfile

import "os"

// createTemp: no flock here; temporaries are not marked as a live
// writer's, and Clean removes none.
func createTemp(dir, pattern string) (*os.File, func(), error) {
	f, err := os.CreateTemp(dir, pattern)
	if err != nil {
		return nil, nil, err
	}
	return f, func() {}, nil
}

// removeIfStale cannot tell a live writer's temporary from a dead one's.
func removeIfStale(string) (bool, error) { return false, nil }
