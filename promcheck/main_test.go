package promcheck

import (
	"testing"

	"go.uber.org/goleak"
)

// Run owns every goroutine it starts; a Check starts none that outlive it.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
