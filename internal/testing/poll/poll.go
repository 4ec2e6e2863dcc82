// Package poll waits in tests for a condition with a deadline, instead of a
// fixed sleep that is too long on a fast machine and too short on a busy one.
package poll

import (
	"fmt"
	"testing"
	"time"
)

// Interval between checks: short, since conditions here are cheap reads.
const Interval = 20 * time.Millisecond

// Until calls cond until it returns true and fails the test if it has not
// within timeout. It returns how long it took.
func Until(t testing.TB, timeout time.Duration, cond func() bool, format string, args ...any) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		if cond() {
			return time.Since(start)
		}
		if time.Since(start) > timeout {
			t.Fatalf("after %s: "+format, append([]any{timeout}, args...)...)
		}
		time.Sleep(Interval)
	}
}

// Latest formats as the string s points to when it is formatted: pass it
// to Until for a message that shows what cond saw last, e.g.
// poll.Until(t, d, cond, "last seen: %s", poll.Latest(&last)).
func Latest(s *string) fmt.Stringer { return latest{s} }

type latest struct{ s *string }

func (l latest) String() string { return *l.s }
