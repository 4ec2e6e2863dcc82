package backoff

import (
	"testing"
	"time"
)

func TestDelayDoublesCapsAndJitters(t *testing.T) {
	p := Policy{Base: 100 * time.Millisecond, Max: time.Second}
	for failures, hi := range []time.Duration{100, 200, 400, 800, 1000, 1000} {
		hi *= time.Millisecond
		if failures == 5 {
			failures = 1000 // far beyond the cap: no overflow
		}
		seen := map[time.Duration]bool{}
		for range 200 {
			d := p.Delay(failures)
			if d < hi/2 || d > hi {
				t.Fatalf("Delay(%d) = %s, want within [%s, %s]", failures, d, hi/2, hi)
			}
			seen[d] = true
		}
		if len(seen) < 10 {
			t.Errorf("Delay(%d) took %d values in 200 draws: not jittered", failures, len(seen))
		}
	}
}
