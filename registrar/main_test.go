package registrar

import (
	"os"
	"strings"
	"testing"

	"go.uber.org/goleak"
)

// Every goroutine has an owner that stops it and waits for it: none may
// outlive the tests (the etcd members and clients the tests start are
// stopped by then). A helper process (this binary run as
// -test.run=^TestHelper...$ by a test, to be another process or user) is
// not checked: it exits at once, its connections with it.
func TestMain(m *testing.M) {
	for _, a := range os.Args[1:] {
		if strings.HasPrefix(a, "-test.run=^TestHelper") {
			os.Exit(m.Run())
		}
	}
	goleak.VerifyTestMain(m)
}
