// Package leaktest is the TestMain of packages whose tests also run their
// own binary as a helper process: goleak checks that no goroutine outlives
// the tests, except in a helper process (the binary run by a test as
// -test.run=^TestHelper...$, to be another process or user), which exits
// at once and its connections with it.
package leaktest

import (
	"os"
	"strings"
	"testing"

	"go.uber.org/goleak"
)

// VerifyTestMain runs the tests and, unless this is a helper process,
// fails them if a goroutine outlives them.
func VerifyTestMain(m *testing.M) {
	for _, a := range os.Args[1:] {
		if strings.HasPrefix(a, "-test.run=^TestHelper") {
			os.Exit(m.Run())
		}
	}
	goleak.VerifyTestMain(m)
}
