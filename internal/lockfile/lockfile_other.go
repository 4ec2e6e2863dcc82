//go:build !unix

package lockfile

// Acquire: no advisory locks here; callers go without.
func Acquire(path string) (release func(), err error) { return func() {}, nil }
