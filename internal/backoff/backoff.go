// Package backoff is workersd's one retry policy: a wait that doubles with
// each consecutive failure up to a cap, jittered so that the many workers
// (or sdwriters) that lost etcd together do not come back together.
package backoff

import (
	"math/rand/v2"
	"time"
)

// Policy doubles from Base up to Max.
type Policy struct{ Base, Max time.Duration }

// Delay is the wait before the next attempt after failures consecutive
// failures (0 for the first retry): Base doubled that many times, at most
// Max, then drawn uniformly from its upper half.
func (p Policy) Delay(failures int) time.Duration {
	d := p.Base << min(max(failures, 0), 16)
	if d > p.Max || d <= 0 {
		d = p.Max
	}
	return d/2 + rand.N(d/2+1)
}
