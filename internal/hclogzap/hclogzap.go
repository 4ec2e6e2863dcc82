// Package hclogzap gives libraries that log through zap (etcd's server and
// client) a *zap.Logger that writes through a hashicorp/go-hclog logger, so
// a process has one log stream in one format (as internal/hclogslog does
// for slog).
//
// Only warnings and errors pass: etcd's info lines are many (every
// compaction, every snapshot) and say nothing an operator acts on, while its
// warnings (a quota above 8 GiB, a slow disk, a failed compaction) and
// errors must reach the log.
package hclogzap

import (
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/hashicorp/go-hclog"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// New returns a *zap.Logger that forwards entries at warn and above, with
// their fields, to l. A nil l discards everything.
func New(l hclog.Logger) *zap.Logger {
	if l == nil {
		return zap.NewNop()
	}
	return zap.New(NewCore(l, zapcore.WarnLevel))
}

// NewCore returns a zapcore.Core that forwards entries at min and above to
// l; a nil l gives a core that discards everything.
func NewCore(l hclog.Logger, min zapcore.Level) zapcore.Core {
	if l == nil {
		return zapcore.NewNopCore()
	}
	return &core{l: l, min: min}
}

type core struct {
	l      hclog.Logger
	min    zapcore.Level
	fields []any // key, value, ... from With
}

// hclogLevel maps zap's levels to hclog's: DPanic, Panic and Fatal are
// errors (zap itself panics or exits after writing them).
func hclogLevel(lv zapcore.Level) hclog.Level {
	switch {
	case lv >= zapcore.ErrorLevel:
		return hclog.Error
	case lv >= zapcore.WarnLevel:
		return hclog.Warn
	case lv >= zapcore.InfoLevel:
		return hclog.Info
	default:
		return hclog.Debug
	}
}

func (c *core) Enabled(lv zapcore.Level) bool {
	if lv < c.min {
		return false
	}
	level := c.l.GetLevel()
	return level != hclog.Off && hclogLevel(lv) >= level
}

func (c *core) With(fields []zapcore.Field) zapcore.Core {
	n := *c
	n.fields = appendFields(append([]any(nil), c.fields...), fields)
	return &n
}

func (c *core) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if c.Enabled(e.Level) {
		return ce.AddCore(e, c)
	}
	return ce
}

func (c *core) Write(e zapcore.Entry, fields []zapcore.Field) error {
	args := appendFields(append([]any(nil), c.fields...), fields)
	if e.LoggerName != "" {
		args = append(args, "logger", e.LoggerName)
	}
	if e.Level >= zapcore.DPanicLevel {
		args = append(args, "zap_level", e.Level.String())
	}
	c.l.Log(hclogLevel(e.Level), e.Message, args...)
	return nil
}

func (c *core) Sync() error { return nil }

// appendFields appends each field as hclog's key, value pairs, in the
// order given. A field that encodes as several keys (a namespace, an
// object inlined) gives each of them.
func appendFields(args []any, fields []zapcore.Field) []any {
	for _, f := range fields {
		enc := zapcore.NewMapObjectEncoder()
		f.AddTo(enc)
		for _, k := range slices.Sorted(maps.Keys(enc.Fields)) {
			args = append(args, k, value(enc.Fields[k]))
		}
	}
	return args
}

// value makes what zap's map encoder produced printable by hclog: a
// duration as "1.5s" in text and JSON alike, errors and stringers as they
// are, everything else formatted with %v.
func value(v any) any {
	switch v := v.(type) {
	case time.Duration:
		return v.String()
	case string, bool, int, int8, int16, int32, int64, uint, uint8, uint16, uint32, uint64, float32, float64, error, fmt.Stringer:
		return v
	default:
		return fmt.Sprintf("%v", v)
	}
}
