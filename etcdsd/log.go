package etcdsd

import (
	"context"
	"io"
	"log/slog"
	"time"

	"github.com/hashicorp/go-hclog"
)

// limiter is a token bucket for log lines about the content under the prefix:
// a flood of garbage must not become a flood of logs. Not safe for concurrent
// use; the Discoverer's loop owns it.
type limiter struct {
	every      time.Duration // one token per every
	burst      int
	tokens     int
	last       time.Time
	suppressed int
	now        func() time.Time
}

func newLimiter(every time.Duration, burst int) *limiter {
	return &limiter{every: every, burst: burst, tokens: burst, now: time.Now}
}

// allow takes a token. When it does, it also returns how many lines were
// suppressed since the last allowed one, so the log can say so.
func (l *limiter) allow() (ok bool, suppressed int) {
	now := l.now()
	if l.last.IsZero() {
		l.last = now
	}
	if n := int(now.Sub(l.last) / l.every); n > 0 {
		l.tokens = min(l.burst, l.tokens+n)
		l.last = l.last.Add(time.Duration(n) * l.every)
	}
	if l.tokens == 0 {
		l.suppressed++
		return false, 0
	}
	l.tokens--
	suppressed, l.suppressed = l.suppressed, 0
	return true, suppressed
}

// slogSink forwards hclog lines to a *slog.Logger: a Discoverer built by
// Prometheus (SDConfig.NewDiscoverer) logs through Prometheus' logger.
type slogSink struct{ l *slog.Logger }

// hclogFromSlog returns an hclog.Logger that writes through l.
func hclogFromSlog(l *slog.Logger) hclog.Logger {
	if l == nil {
		return hclog.NewNullLogger()
	}
	il := hclog.NewInterceptLogger(&hclog.LoggerOptions{Output: io.Discard, Level: hclog.Trace})
	il.RegisterSink(slogSink{l})
	return il
}

func (s slogSink) Accept(name string, level hclog.Level, msg string, args ...any) {
	lv := slog.LevelInfo
	switch {
	case level >= hclog.Error:
		lv = slog.LevelError
	case level == hclog.Warn:
		lv = slog.LevelWarn
	case level <= hclog.Debug:
		lv = slog.LevelDebug
	}
	if name != "" {
		args = append(args, "logger", name)
	}
	s.l.Log(context.Background(), lv, msg, args...)
}
