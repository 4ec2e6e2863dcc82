package registrar

import (
	"testing"

	"github.com/workersd/workersd/internal/testing/leaktest"
)

// Every goroutine has an owner that stops it and waits for it: none may
// outlive the tests (the etcd members and clients the tests start are
// stopped by then).
func TestMain(m *testing.M) { leaktest.VerifyTestMain(m) }
