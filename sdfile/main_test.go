package sdfile

import (
	"testing"

	"go.uber.org/goleak"
)

// Every Syncer's goroutines end with its Run's context.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
