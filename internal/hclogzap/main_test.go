package hclogzap

import (
	"testing"

	"go.uber.org/goleak"
)

// The adapter starts no goroutine.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
