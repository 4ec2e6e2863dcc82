package embedetcd_test

import (
	"testing"

	"go.uber.org/goleak"
)

// Close stops every goroutine of the member, its maintenance included.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
