//go:build !unix

package embedetcd

// lockDir: no advisory locks here; etcd's own lock on its database stays
// the only guard.
func lockDir(dir string) (release func(), err error) { return func() {}, nil }
