// Package lockfile is the one home of "only one process may use this": an
// exclusive advisory lock that fails at once instead of waiting. etcd waits
// for ever, silent and deaf to signals, on a database another process
// holds; sdwriter's embedded etcd takes this lock on its data dir first,
// and the agent on its state file.
package lockfile

import "errors"

// ErrHeld is the error of Acquire when another process holds the lock.
var ErrHeld = errors.New("in use by another process")
