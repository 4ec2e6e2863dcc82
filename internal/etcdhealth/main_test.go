package etcdhealth

import (
	"testing"

	"go.uber.org/goleak"
)

// Run owns every goroutine it starts: none may outlive the tests (the
// etcd members and clients the tests start are stopped by then).
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
